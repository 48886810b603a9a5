"""Learned-learning-rate SGD steps on batched SIRENs: the Meta-SGD inner loop.

``izoo meta-init`` (``izoo.fitting.meta_init``) meta-learns a shared init together with one SGD learning rate
per parameter such that ``steps`` plain gradient steps from the init, ``φ ← φ − α ⊙ ∇L(φ)``, fit an image
as well as possible; it differentiates through these steps (``create_graph=True``). Every fit job from such
an init takes the same steps first (``warm_start``, no graph), then its Adam phase.

Why autograd here and not the engine's hand-written backward: meta-learning needs second derivatives through
the inner steps, and the fit jobs' few warm-start steps must be exactly the steps that were meta-learned; the
engine (``izoo.siren.engine``) fuses Adam into its step and is not differentiable.

The loss is the engine's: per item the mean squared error over pixels and channels in ImageNet-normalised
space; the batch loss is the sum over items, so each item's gradient is its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from izoo.metrics import psnr
from izoo.siren import model as siren
from izoo.siren.model import Params, SirenSpec

#: activation elements (items × pixels × width) per warm-start chunk: ~128 MiB per float32 activation
CHUNK_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class WarmStart:
    """How every fit from a Meta-SGD init starts: ``steps`` SGD steps with per-parameter ``lrs``, then its Adam
    phase at ``adam_lr_factor`` × the phase's learning rates (calibrated by ``izoo meta-init``)."""

    lrs: Params          # per-item shapes, the family's parameter order
    steps: int
    adam_lr_factor: float = 1.0


def targets(images01: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` images in [0, 1] → the normalised per-pixel targets ``[B, P, 3]`` the fit regresses."""
    return siren.normalise(images01).flatten(2).transpose(1, 2)


def item_losses(params: Params, target: torch.Tensor, coords: torch.Tensor, w0: float) -> torch.Tensor:
    """Per-item mean squared error ``[B]`` of batched SIRENs ``params`` against ``target`` ``[B, P, out]``."""
    return (siren.forward(params, coords, w0) - target).pow(2).mean(dim=(1, 2))


def item_psnr(params: Params, images01: torch.Tensor, coords: torch.Tensor, w0: float) -> torch.Tensor:
    """Per-item PSNR ``[B]`` of batched SIRENs against ``[B, 3, H, W]`` images, on de-normalised pixels (as the fit reports)."""
    pred = siren.denormalise_rgb(siren.forward(params, coords, w0))
    return psnr(pred, images01.flatten(2).transpose(1, 2))


def sgd_steps(params: Params, lrs: Sequence[torch.Tensor], target: torch.Tensor, coords: torch.Tensor, w0: float,
              steps: int, create_graph: bool = False) -> Params:
    """``steps`` steps ``φ ← φ − α ⊙ ∇L(φ)`` of batched ``params`` (``lrs`` per-item shapes, shared by all items)."""
    phi = list(params) if create_graph else [p.detach().requires_grad_(True) for p in params]
    for _ in range(steps):
        grads = torch.autograd.grad(item_losses(phi, target, coords, w0).sum(), phi, create_graph=create_graph)
        phi = [p - a * g for p, a, g in zip(phi, lrs, grads)]
        if not create_graph:
            phi = [p.detach().requires_grad_(True) for p in phi]
    return phi if create_graph else [p.detach() for p in phi]


def warm_start(params: Params, lrs: Sequence[torch.Tensor], images01: torch.Tensor, spec: SirenSpec, steps: int,
               chunk_items: int | None = None) -> Params:
    """The fit jobs' first ``steps`` learned-lr SGD steps of ``params`` (``[B, ...]``, on the images' device), in item chunks."""
    if steps <= 0 or not len(images01):
        return list(params)
    height, width = images01.shape[-2:]
    device, dtype = images01.device, images01.dtype
    coords = siren.coordinate_grid(height, width, device=device).to(dtype).reshape(-1, 2)
    lrs = [a.to(device, dtype) for a in lrs]
    chunk = chunk_items or max(1, CHUNK_ELEMENTS // (height * width * spec.width))
    parts = []
    with torch.enable_grad():
        for lo in range(0, len(images01), chunk):
            part = slice(lo, lo + chunk)
            parts.append(sgd_steps([p[part] for p in params], lrs, targets(images01[part]), coords, spec.w0, steps))
    return [torch.cat([chunk_params[k] for chunk_params in parts]) for k in range(len(params))]
