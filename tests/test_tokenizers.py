"""Learnable tokenizers: start on the pixel grid, receive gradients, and the LP+reg non-close penalty."""

from __future__ import annotations

import pytest
import torch

from izoo.benchmarks.tokenizers import (TOKENIZERS, CoordinateTokenizer, group_tokens, non_close_alpha,
                                        non_close_penalty, pixel_grid, token_ids)
from izoo.siren import model as siren

SPEC = siren.SirenSpec(depth=3, width=16)


@pytest.mark.parametrize("kind", ["uniform", "s", "lc", "lp", "lp_reg"])
def test_tokenizers_start_on_the_pixel_grid(kind: str) -> None:
    tok = CoordinateTokenizer(kind, 8, 12, 4)
    assert torch.allclose(tok.coordinates(), pixel_grid(8, 12), atol=1e-6)


def test_lp_rand_starts_on_a_shuffled_grid_and_is_seeded() -> None:
    a = CoordinateTokenizer("lp_rand", 8, 8, 4, seed=3).coordinates().reshape(-1, 2)
    b = CoordinateTokenizer("lp_rand", 8, 8, 4, seed=3).coordinates().reshape(-1, 2)
    grid = pixel_grid(8, 8).reshape(-1, 2)
    assert torch.equal(a, b) and not torch.allclose(a, grid)
    key = lambda xy: sorted(map(tuple, xy.round(decimals=5).tolist()))  # noqa: E731
    assert key(a) == key(grid)  # the same pixels, regrouped


def test_query_matches_rendering_for_the_uniform_tokenizer() -> None:
    params = siren.init_params(SPEC, [1, 2])
    tok = CoordinateTokenizer("uniform", 8, 8, 4)
    queried = siren.denormalise_rgb(tok(params, SPEC.w0).permute(0, 2, 3, 1)).clamp(0, 1).permute(0, 3, 1, 2)
    assert torch.allclose(queried, siren.render(params, SPEC, 8, 8), atol=1e-6)


@pytest.mark.parametrize("kind", [k for k in TOKENIZERS if k != "uniform"])
def test_gradients_reach_the_tokenizer_coordinates(kind: str) -> None:
    tok = CoordinateTokenizer(kind, 8, 8, 4, seed=0)
    params = siren.init_params(SPEC, [5, 6, 7])
    images = tok(params, SPEC.w0)
    loss = (images * torch.linspace(-1, 1, images.numel()).reshape(images.shape)).sum() + tok.penalty()
    loss.backward()
    learnable = [(n, p) for n, p in tok.named_parameters()]
    assert learnable, f"{kind} has no learnable parameters"
    for name, p in learnable:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    if kind == "s":
        assert [n for n, _ in learnable] == ["scale_logit"]  # S keeps its centres fixed
    if kind == "lc":
        assert sorted(n for n, _ in learnable) == ["centres", "scale_logit"]


def test_uniform_has_nothing_to_learn() -> None:
    assert not CoordinateTokenizer("uniform", 8, 8, 4).learnable


def test_lp_coordinates_stay_inside_the_square() -> None:
    tok = CoordinateTokenizer("lp", 8, 8, 4)
    with torch.no_grad():
        tok.theta.add_(torch.randn_like(tok.theta) * 10)
    assert tok.coordinates().abs().max() <= 1.0


def test_s_scale_is_non_negative_and_bounded() -> None:
    tok = CoordinateTokenizer("s", 8, 8, 4)
    with torch.no_grad():
        tok.scale_logit.copy_(torch.linspace(-50, 50, tok.scale_logit.numel()).reshape(tok.scale_logit.shape))
    scales = tok.scales()
    assert scales.min() >= 0 and scales.max() <= 2


def test_non_close_penalty_zero_on_grid_positive_when_collapsed() -> None:
    alpha = non_close_alpha(32, 32)
    assert alpha == pytest.approx(1 / 32)
    tokens = group_tokens(pixel_grid(32, 32), 4)          # grid spacing 2/32 = 2α
    assert tokens.shape == (64, 16, 2)
    assert non_close_penalty(tokens, alpha) == 0
    exactly_alpha = torch.tensor([[[0.0, 0.0], [alpha, 0.0], [0.0, alpha], [alpha, alpha]]])
    assert non_close_penalty(exactly_alpha, alpha) == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.zeros(2, 16, 2, requires_grad=True)
    penalty = non_close_penalty(collapsed, alpha)
    assert penalty.item() == pytest.approx(2 * 16 * 15 * alpha, rel=1e-4)  # every ordered pair, both tokens
    penalty.backward()
    assert torch.isfinite(collapsed.grad).all()
    half = torch.tensor([[[0.0, 0.0], [alpha / 2, 0.0]]])
    assert non_close_penalty(half, alpha) == pytest.approx(2 * alpha / 2, rel=1e-4)


def test_penalty_only_for_lp_reg_and_pushes_collapsed_points_apart() -> None:
    assert CoordinateTokenizer("lp", 8, 8, 4).penalty() == 0
    tok = CoordinateTokenizer("lp_reg", 8, 8, 4)
    assert tok.penalty() == 0
    with torch.no_grad():
        # nearly collapse the first token (exactly equal points have no direction to separate along)
        tok.theta[:4, :4] = 0.1 + 1e-3 * torch.randn(4, 4, 2, generator=torch.Generator().manual_seed(0))
    before = tok.penalty()
    assert before > 0
    opt = torch.optim.SGD(tok.parameters(), lr=0.01)
    for _ in range(20):
        opt.zero_grad()
        tok.penalty().backward()
        opt.step()
    assert tok.penalty() < before


def test_token_ids_match_group_tokens() -> None:
    ids = token_ids(8, 12, 4)
    coords = pixel_grid(8, 12)
    tokens = group_tokens(coords, 4)
    for t in range(ids.max() + 1):
        members = coords[ids == t]
        assert torch.equal(members, tokens[t])


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="multiple of the patch"):
        CoordinateTokenizer("lc", 10, 8, 4)
    with pytest.raises(ValueError, match="unknown tokenizer"):
        CoordinateTokenizer("lq", 8, 8, 4)
