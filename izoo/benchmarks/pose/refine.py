"""iNeRF-style pose refinement: minimise the photometric error of a frozen NeRF over a camera pose.

Following iNeRF (Yen-Chen et al., 2021), the pose is updated on the left by the exponential of a twist
``ξ ∈ se(3)``: ``T = exp(ξ^) T₀``, with ``ξ`` optimised by Adam on the mean squared RGB error of a random batch of
rays per step. The NeRF weights never change (they are detached). Rays are drawn with a bias towards object pixels
(non-white in the target image), the same adaptive sampling the NeRF fitting uses, because the white background
carries no pose information.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from izoo.benchmarks.engine import train_step
from izoo.nerf.model import NerfSpec, batch_params
from izoo.nerf.render import pixel_rays, render_rays


@dataclass(frozen=True)
class RefineSettings:
    """Refinement settings (iNeRF defaults: Adam, lr 0.01, a few hundred steps of a ray batch)."""

    steps: int = 300
    lr: float = 0.01
    n_rays: int = 1024
    object_fraction: float = 0.8  # share of each ray batch drawn from non-white target pixels
    near: float = 2.0
    far: float = 6.0
    n_samples: int = 64


def twist_matrix(xi: torch.Tensor) -> torch.Tensor:
    """``[..., 6]`` twist ``(ω, v)`` → ``[..., 4, 4]`` matrix in se(3)."""
    w, v = xi[..., :3], xi[..., 3:]
    zero = torch.zeros_like(w[..., 0])
    skew = torch.stack([
        torch.stack([zero, -w[..., 2], w[..., 1]], dim=-1),
        torch.stack([w[..., 2], zero, -w[..., 0]], dim=-1),
        torch.stack([-w[..., 1], w[..., 0], zero], dim=-1),
    ], dim=-2)
    top = torch.cat([skew, v.unsqueeze(-1)], dim=-1)
    bottom = torch.zeros(*xi.shape[:-1], 1, 4, device=xi.device, dtype=xi.dtype)
    return torch.cat([top, bottom], dim=-2)


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """Exponential map se(3) → SE(3) (``torch.linalg.matrix_exp`` of the 4×4 twist; exact and differentiable)."""
    return torch.linalg.matrix_exp(twist_matrix(xi))


def _sample_pixels(target: torch.Tensor, n_rays: int, object_fraction: float,
                   generator: torch.Generator) -> torch.Tensor:
    """``[n_rays, 2]`` pixel indices (column, row), a share ``object_fraction`` from non-white target pixels."""
    height, width = target.shape[:2]
    flat = target.reshape(-1, 3)
    object_idx = torch.nonzero(flat.min(dim=-1).values < 0.99).squeeze(-1).cpu()
    n_object = min(int(round(n_rays * object_fraction)), len(object_idx)) if len(object_idx) else 0
    picks = []
    if n_object:
        picks.append(object_idx[torch.randint(len(object_idx), (n_object,), generator=generator)])
    picks.append(torch.randint(height * width, (n_rays - n_object,), generator=generator))
    idx = torch.cat(picks).to(target.device)
    return torch.stack([idx % width, idx // width], dim=-1)


def photometric_error(params: Mapping[str, torch.Tensor], spec: NerfSpec, target: torch.Tensor, c2w: torch.Tensor,
                      focal: float, near: float = 2.0, far: float = 6.0, n_samples: int = 64,
                      chunk_rays: int = 4096) -> float:
    """Mean squared RGB error of the full rendered view at ``c2w`` against ``target`` ``[H, W, 3]`` (no grad)."""
    height, width = target.shape[:2]
    nerf = {k: v.detach() for k, v in batch_params(params, spec).items()}
    j, i = torch.meshgrid(torch.arange(height, device=target.device), torch.arange(width, device=target.device),
                          indexing="ij")
    pix = torch.stack([i, j], dim=-1).reshape(-1, 2)
    total = 0.0
    with torch.no_grad():
        for start in range(0, pix.shape[0], chunk_rays):
            sub = pix[start:start + chunk_rays]
            rays_o, rays_d = pixel_rays(sub, focal, height, width, c2w.expand(sub.shape[0], 4, 4))
            rgb = render_rays(nerf, spec, rays_o.unsqueeze(0), rays_d.unsqueeze(0), near, far, n_samples)["rgb"][0]
            total += float((rgb - target[sub[:, 1], sub[:, 0]]).pow(2).sum())
    return total / (height * width * 3)


def refine_pose(params: Mapping[str, torch.Tensor], spec: NerfSpec, target: torch.Tensor, init_c2w: torch.Tensor,
                focal: float, settings: RefineSettings = RefineSettings(), seed: int = 0
                ) -> tuple[torch.Tensor, list[float]]:
    """Refine ``init_c2w`` ``[4, 4]`` so the frozen NeRF renders ``target`` ``[H, W, 3]``; returns the pose and losses."""
    height, width = target.shape[:2]
    nerf = {k: v.detach() for k, v in batch_params(params, spec).items()}
    init = init_c2w.detach().to(target.device, torch.float32)
    xi = torch.zeros(6, device=target.device, requires_grad=True)
    optimiser = torch.optim.Adam([xi], lr=settings.lr)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    for _ in range(settings.steps):
        pix = _sample_pixels(target, settings.n_rays, settings.object_fraction, generator)
        c2w = se3_exp(xi) @ init
        rays_o, rays_d = pixel_rays(pix, focal, height, width, c2w.expand(pix.shape[0], 4, 4))
        rgb = render_rays(nerf, spec, rays_o.unsqueeze(0), rays_d.unsqueeze(0), settings.near, settings.far,
                          settings.n_samples)["rgb"][0]
        loss = (rgb - target[pix[:, 1], pix[:, 0]]).pow(2).mean()
        train_step(optimiser, loss)
        losses.append(float(loss.detach()))
    with torch.no_grad():
        refined = se3_exp(xi) @ init
    return refined, losses
