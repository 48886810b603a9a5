"""NeRF model and volume rendering: closed-form sphere, ray conventions, batched query, grids."""

from __future__ import annotations

import math

import pytest
import torch

from izoo.nerf import model
from izoo.nerf.model import NerfSpec, positional_encoding, query
from izoo.nerf.render import (get_rays, grid_points, query_grid, render_field, render_image, render_rays,
                              render_views)
from izoo.nerf.synthetic import look_at_pose, sphere_closed_form, sphere_field


SMALL = NerfSpec(depth=2, width=16, pos_freqs=3, dir_freqs=2)


def test_uniform_sphere_matches_closed_form() -> None:
    pose = look_at_pose((0.0, -4.0, 1.0))
    rays_o, rays_d = get_rays(12, 12, 14.0, pose)
    radius, density, colour = 1.0, 3.0, (0.9, 0.3, 0.1)
    out = render_field(sphere_field(radius, density, colour), rays_o.reshape(1, -1, 3), rays_d.reshape(1, -1, 3),
                       near=2.0, far=6.0, n_samples=4096)
    expected = sphere_closed_form(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), radius, density, colour)
    hits = (expected < 0.99).any(-1)
    assert int(hits.sum()) > 20 and int((~hits).sum()) > 20  # the image shows both sphere and background
    torch.testing.assert_close(out["rgb"][0], expected, atol=0.01, rtol=0)
    # opacity: acc = 1 - transmittance
    assert torch.allclose(out["acc"][0][~hits], torch.zeros(int((~hits).sum())), atol=1e-6)


def test_stratified_jitter_is_unbiased_around_closed_form() -> None:
    pose = look_at_pose((4.0, 0.0, 0.0))
    rays_o, rays_d = get_rays(4, 4, 3.0, pose)
    o, d = rays_o.reshape(1, -1, 3), rays_d.reshape(1, -1, 3)
    field = sphere_field(1.0, 2.0, (0.2, 0.6, 0.4))
    gen = torch.Generator().manual_seed(0)
    renders = torch.stack([render_field(field, o, d, 2.0, 6.0, 64, perturb=True, generator=gen)["rgb"][0]
                           for _ in range(64)])
    expected = sphere_closed_form(o[0], d[0], 1.0, 2.0, (0.2, 0.6, 0.4))
    torch.testing.assert_close(renders.mean(0), expected, atol=0.02, rtol=0)


def test_centre_ray_looks_down_minus_z_of_the_camera() -> None:
    pose = look_at_pose((0.0, 0.0, 4.0), world_up=(0.0, 1.0, 0.0))
    rays_o, rays_d = get_rays(8, 8, 10.0, pose)
    centre = rays_d[4, 4] / rays_d[4, 4].norm()
    torch.testing.assert_close(centre, torch.tensor([0.0, 0.0, -1.0]))
    torch.testing.assert_close(rays_o[0, 0], torch.tensor([0.0, 0.0, 4.0]))
    # +row goes down the image: world -y for this camera; +column goes right: world +x
    assert rays_d[7, 4, 1] < rays_d[0, 4, 1] and rays_d[4, 7, 0] > rays_d[4, 0, 0]


def test_positional_encoding_follows_the_official_order() -> None:
    x = torch.tensor([[0.1, -0.2, 0.3]])
    enc = positional_encoding(x, 2)
    expected = torch.cat([x, torch.sin(x), torch.cos(x), torch.sin(2 * x), torch.cos(2 * x)], dim=-1)
    torch.testing.assert_close(enc, expected)
    assert SMALL.pos_channels == enc.shape[-1] + 6  # 3 frequencies in SMALL


def test_batched_query_equals_per_scene_reference_with_nn_linear() -> None:
    params = model.init_params(SMALL, [1, 2, 3])
    xyz = torch.randn(3, 10, 3)
    dirs = torch.randn(3, 10, 3)
    rgb, sigma = query(params, xyz, dirs, SMALL)
    assert rgb.shape == (3, 10, 3) and sigma.shape == (3, 10)
    assert (rgb >= 0).all() and (rgb <= 1).all() and (sigma >= 0).all()
    for b in range(3):
        lin = {name: torch.nn.Linear(i, o) for name, (i, o) in SMALL.layer_dims().items()}
        with torch.no_grad():
            for name, layer in lin.items():
                layer.weight.copy_(params[f"{name}.weight"][b])
                layer.bias.copy_(params[f"{name}.bias"][b])
            h = positional_encoding(xyz[b], SMALL.pos_freqs)
            for i in range(SMALL.depth):
                h = torch.relu(lin[f"layer{i}"](h))
            ref_sigma = torch.relu(lin["sigma"](h)).squeeze(-1)
            unit = dirs[b] / dirs[b].norm(dim=-1, keepdim=True)
            h = torch.relu(lin["view0"](torch.cat([lin["feature"](h), positional_encoding(unit, SMALL.dir_freqs)], -1)))
            ref_rgb = torch.sigmoid(lin["rgb"](h))
        torch.testing.assert_close(rgb[b], ref_rgb)
        torch.testing.assert_close(sigma[b], ref_sigma)


def test_default_spec_is_the_papers_4_by_128_nerf() -> None:
    spec = NerfSpec()
    assert spec.param_shapes()["layer0.weight"] == (128, 63)
    assert spec.param_shapes()["view0.weight"] == (64, 128 + 27)
    assert sum(1 for k in spec.param_names() if k.startswith("layer") and k.endswith("weight")) == 4
    assert model.spec_from_params(model.init_params(spec, [0])) == spec
    assert spec.to_dict()["skips"] == []


def test_render_image_equals_batched_views_and_rays() -> None:
    params = model.init_params(SMALL, [5, 6])
    pose = look_at_pose((0.0, -4.0, 2.0))
    one = {k: v[1] for k, v in params.items()}
    img = render_image(one, SMALL, pose, 6, 5, 7.0, n_samples=16)
    assert img.shape == (6, 5, 3)
    views = render_views(params, SMALL, pose.view(1, 1, 4, 4).expand(2, 1, 4, 4), 6, 5, 7.0, n_samples=16)
    torch.testing.assert_close(img, views[1, 0])
    rays_o, rays_d = get_rays(6, 5, 7.0, pose)
    direct = render_rays({k: v[1:] for k, v in params.items()}, SMALL, rays_o.reshape(1, -1, 3),
                         rays_d.reshape(1, -1, 3), n_samples=16)["rgb"].reshape(6, 5, 3)
    torch.testing.assert_close(img, direct)


@pytest.mark.parametrize("resolution", [4, 5])
def test_query_grid_layout(resolution: int) -> None:
    params = model.init_params(SMALL, [7, 8])
    grid = query_grid(params, SMALL, resolution=resolution, bound=1.5)
    assert grid.shape == (2, 4, resolution, resolution, resolution)
    pts = grid_points(resolution, 1.5)
    i, j, k = 1, resolution - 1, 2
    rgb, sigma = query(params, pts[i, j, k].view(1, 1, 3).expand(2, 1, 3),
                       torch.tensor([0.0, 0.0, -1.0]).expand(2, 1, 3), SMALL)
    torch.testing.assert_close(grid[:, :3, i, j, k], rgb[:, 0])
    torch.testing.assert_close(grid[:, 3, i, j, k], sigma[:, 0])
    assert math.isclose(float(pts[0, 0, 0, 0]), -1.5 + 1.5 / resolution, rel_tol=1e-6)
