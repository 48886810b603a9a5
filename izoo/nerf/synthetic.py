"""Analytic radiance fields and orbit cameras: ground truth for tests and synthetic scenes for benchmarks.

A uniform sphere (density ``σ0`` inside radius ``r``) has a closed-form rendering: a ray passing at distance
``d < r`` from the centre crosses a chord of length ``L = 2√(r² − d²)``, so its transmittance is ``exp(−σ0 L)``
and on white its colour is ``c (1 − e^{−σ0 L}) + e^{−σ0 L}``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from izoo.datasets.base import Scene
from izoo.nerf.render import get_rays, render_field


def look_at_pose(position: Sequence[float], target: Sequence[float] = (0.0, 0.0, 0.0),
                 world_up: Sequence[float] = (0.0, 0.0, 1.0)) -> torch.Tensor:
    """Camera-to-world ``[4, 4]`` of a camera at ``position`` looking at ``target`` (Blender: looks down −z, +y up)."""
    pos = torch.tensor(position, dtype=torch.float32)
    back = pos - torch.tensor(target, dtype=torch.float32)
    back = back / back.norm()
    up_world = torch.tensor(world_up, dtype=torch.float32)
    right = torch.linalg.cross(up_world, back)
    if float(right.norm()) < 1e-6:  # looking straight along world_up: any horizontal right vector works
        right = torch.tensor([1.0, 0.0, 0.0])
    right = right / right.norm()
    up = torch.linalg.cross(back, right)
    pose = torch.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, back, pos
    return pose


def orbit_poses(n_views: int, radius: float = 4.0, elevation_deg: float = 30.0, seed: int | None = None) -> torch.Tensor:
    """``[V, 4, 4]`` cameras on a sphere of ``radius`` around the origin: evenly spaced azimuths, or random if ``seed``."""
    if seed is None:
        azimuths = torch.arange(n_views, dtype=torch.float32) * (2 * math.pi / max(n_views, 1))
        elevations = torch.full((n_views,), math.radians(elevation_deg))
    else:
        gen = torch.Generator().manual_seed(int(seed))
        azimuths = torch.rand(n_views, generator=gen) * 2 * math.pi
        elevations = torch.asin(torch.rand(n_views, generator=gen) * 0.9)  # upper hemisphere, like Blender renders
    poses = []
    for az, el in zip(azimuths.tolist(), elevations.tolist()):
        pos = (radius * math.cos(el) * math.cos(az), radius * math.cos(el) * math.sin(az), radius * math.sin(el))
        poses.append(look_at_pose(pos))
    return torch.stack(poses)


def sphere_field(radius: float = 1.0, density: float = 5.0, colour: Sequence[float] | None = (0.8, 0.2, 0.1),
                 centre: Sequence[float] = (0.0, 0.0, 0.0)):
    """A uniform sphere field; ``colour=None`` colours it by position (``0.5 + 0.5·(x − centre)/radius``)."""
    def field(xyz: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rel = xyz - torch.tensor(centre, dtype=xyz.dtype, device=xyz.device)
        inside = rel.norm(dim=-1) <= radius
        sigma = torch.where(inside, torch.full_like(inside, density, dtype=xyz.dtype), torch.zeros_like(rel[..., 0]))
        if colour is None:
            rgb = (0.5 + 0.5 * rel / radius).clamp(0.0, 1.0)
        else:
            rgb = torch.tensor(colour, dtype=xyz.dtype, device=xyz.device).expand_as(xyz)
        return rgb, sigma
    return field


def sphere_closed_form(rays_o: torch.Tensor, rays_d: torch.Tensor, radius: float, density: float,
                       colour: Sequence[float], centre: Sequence[float] = (0.0, 0.0, 0.0)) -> torch.Tensor:
    """Exact colour on white of rays ``[..., 3]`` through a uniform sphere with constant ``colour``."""
    d = rays_d / rays_d.norm(dim=-1, keepdim=True)
    rel = torch.tensor(centre, dtype=rays_o.dtype) - rays_o
    along = (rel * d).sum(-1, keepdim=True)
    dist2 = (rel - along * d).pow(2).sum(-1)
    chord = 2.0 * (radius ** 2 - dist2).clamp_min(0.0).sqrt()
    trans = torch.exp(-density * chord).unsqueeze(-1)
    return torch.tensor(colour, dtype=rays_o.dtype) * (1.0 - trans) + trans


def procedural_scene(size: int = 16, n_train: int = 8, n_test: int = 2, label: int = 0, class_name: str = "sphere",
                     radius: float = 1.0, density: float = 8.0, centre: Sequence[float] = (0.0, 0.0, 0.0),
                     colour: Sequence[float] | None = None, n_samples: int = 128, fov_deg: float = 40.0) -> Scene:
    """A small scene rendered from an analytic sphere: train views on an orbit, held-out views between them."""
    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    train = orbit_poses(n_train, elevation_deg=30.0)
    test = orbit_poses(n_test, elevation_deg=45.0)
    poses = torch.cat([train, test])
    field = sphere_field(radius, density, colour, centre)
    rays_o, rays_d = get_rays(size, size, focal, poses)                   # [V, H, W, 3]
    with torch.no_grad():
        out = render_field(field, rays_o.reshape(1, -1, 3), rays_d.reshape(1, -1, 3), 2.0, 6.0, n_samples)
    images = out["rgb"].reshape(len(poses), size, size, 3).clamp(0.0, 1.0)
    return Scene(images=images, poses=poses, focal=float(focal), height=size, width=size,
                 train_views=list(range(n_train)), test_views=list(range(n_train, n_train + n_test)),
                 label=label, class_name=class_name)
