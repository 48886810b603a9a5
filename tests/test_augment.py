"""Differentiable augmentation: weight-space geometry equals image-space geometry; colour ops; gradients."""

from __future__ import annotations

import kornia
import pytest
import torch

from izoo.benchmarks.classification import augment as A
from izoo.siren import model as siren

SPEC = siren.SirenSpec(depth=3, width=32)


def smooth_inrs(n: int = 2) -> siren.Params:
    """Valid SIRENs with a gentle first layer (smooth images, so bilinear resampling is accurate) and visible contrast."""
    params = siren.init_params(SPEC, list(range(1, n + 1)))
    params[0] = params[0] * 0.5
    params[-2] = params[-2] * 10.0
    return params


def interior(size: int, radius: float = 0.85) -> torch.Tensor:
    return (siren.coordinate_grid(size, size).norm(dim=-1) < radius).reshape(size, size)


def test_weight_space_rotation_equals_rotating_the_rendered_image() -> None:
    params, size = smooth_inrs(), 64
    angles = torch.tensor([20.0, -35.0])
    image = siren.render(params, SPEC, size, size)
    rotated_image = kornia.geometry.transform.rotate(image, angles, mode="bilinear")
    moved = A.transform_first_layer(params, A.rotation_matrix(torch.deg2rad(angles)), torch.zeros(2, 2))
    rotated_inr = siren.render(moved, SPEC, size, size)
    inside = interior(size)
    error = (rotated_inr - rotated_image).abs()[..., inside].mean()
    change = (image - rotated_image).abs()[..., inside].mean()
    assert change > 0.02                      # the rotation visibly changes the image ...
    assert error < 0.1 * change               # ... and both routes agree up to interpolation error
    wrong_way = siren.render(A.transform_first_layer(params, A.rotation_matrix(-torch.deg2rad(angles)),
                                                     torch.zeros(2, 2)), SPEC, size, size)
    assert (wrong_way - rotated_image).abs()[..., inside].mean() > 5 * error


def test_weight_space_translation_is_an_exact_pixel_shift() -> None:
    params, size, shift_px = smooth_inrs(1), 32, 3
    shift = torch.tensor([[2.0 * shift_px / size, 0.0]])
    moved = A.transform_first_layer(params, torch.eye(2)[None], shift)
    image, shifted = siren.render(params, SPEC, size, size), siren.render(moved, SPEC, size, size)
    assert torch.allclose(shifted[..., shift_px:], image[..., :-shift_px], atol=1e-5)


def test_first_layer_identity_holds_for_any_affine_map() -> None:
    params = smooth_inrs(3)
    gen = torch.Generator().manual_seed(0)
    matrix = torch.eye(2) + 0.3 * torch.randn(3, 2, 2, generator=gen)
    shift = 0.2 * torch.randn(3, 2, generator=gen)
    x = torch.rand(3, 50, 2, generator=gen) * 2 - 1
    x_moved = torch.einsum("bij,bpj->bpi", matrix, x) + shift[:, None]
    moved = A.transform_first_layer(params, matrix, shift)
    assert torch.allclose(siren.forward(moved, x_moved, SPEC.w0), siren.forward(params, x, SPEC.w0), atol=1e-4)
    assert all(m is p for m, p in zip(moved[2:], params[2:]))  # only the first layer changes


def test_mask_zeroes_points_whose_source_is_out_of_range() -> None:
    coords = siren.coordinate_grid(16, 16)
    shift = torch.tensor([[1.0, 0.0]])                        # content moves half the image to the right
    mask = A.inside_mask(coords, torch.eye(2)[None], shift).reshape(16, 16)
    assert mask[:, :8].sum() == 0 and mask[:, 8:].min() == 1
    rot = A.inside_mask(coords, A.rotation_matrix(torch.tensor([0.6])), torch.zeros(1, 2)).reshape(16, 16)
    assert rot[8, 8] == 1 and rot[0, 0] == 0                   # corners leave the square when rotated


def test_randaugment_plan_composes_geometry_and_cutout() -> None:
    aug = A.RandAugmentINR(n_ops=2, magnitude=9)
    plan = A.AugmentPlan(ops=torch.tensor([[A.OPS.index("translate_x"), A.OPS.index("cutout")]]),
                         signs=torch.tensor([[1.0, 1.0]]), cutout_centres=torch.zeros(1, 2, 2))
    matrix, shift = aug.affine(plan)
    assert torch.allclose(matrix, torch.eye(2)[None]) and shift[0, 0] == pytest.approx(aug.translate)
    coords = siren.coordinate_grid(20, 20)
    _, mask = aug.geometric(smooth_inrs(1), coords, plan)
    cut = (coords.abs() < aug.cutout_side / 2).all(-1)
    assert mask[0, cut].sum() == 0 and mask[0, ~cut].sum() > 0


@pytest.mark.parametrize("op", A.COLOUR_OPS)
def test_colour_ops_change_images_and_pass_gradients(op: str) -> None:
    gen = torch.Generator().manual_seed(1)
    # 32×32: PIL-style equalize leaves images with too few pixels per histogram step unchanged
    base = torch.rand(2, 3, 32, 32, generator=gen) * 0.6 + 0.2
    # a colour ramp so every op (equalize, autocontrast, posterize...) has something to change
    image = (0.7 * base + 0.3 * torch.linspace(0, 1, 32).view(1, 1, 1, 32)).requires_grad_()
    aug = A.RandAugmentINR(n_ops=1, magnitude=9, ops=(op,))
    plan = aug.sample(2, gen)
    out = aug.colour(image, plan)
    assert out.shape == image.shape and not torch.allclose(out, image, atol=1e-4)
    out.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    if op in ("equalize", "posterize"):        # residual trick: identity gradient
        assert torch.allclose(image.grad, torch.ones_like(image))


def test_augmented_query_is_differentiable_in_coordinates_and_seeded() -> None:
    params = smooth_inrs(4)
    coords = siren.coordinate_grid(8, 8).requires_grad_()
    aug = A.RandAugmentINR(n_ops=2, magnitude=9)
    out = A.query_augmented(params, coords, SPEC.w0, 8, 8, aug, torch.Generator().manual_seed(0))
    again = A.query_augmented(params, coords, SPEC.w0, 8, 8, aug, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 8, 8) and torch.equal(out, again)
    out.square().sum().backward()
    assert torch.isfinite(coords.grad).all() and coords.grad.abs().sum() > 0
    plain = A.query_augmented(params, coords.detach(), SPEC.w0, 8, 8, None)
    assert torch.allclose(plain, siren.forward(params, coords.detach(), SPEC.w0).transpose(1, 2).reshape(4, 3, 8, 8))


def test_bad_augment_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown augmentation ops"):
        A.RandAugmentINR(ops=("twirl",))
    with pytest.raises(ValueError, match="magnitude"):
        A.RandAugmentINR(magnitude=12)
