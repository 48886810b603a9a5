"""Image-quality metrics shared by fitting, verification and reports."""

from __future__ import annotations

import torch


def psnr(pred: torch.Tensor, target: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """PSNR in dB of images in [0, 1]; ``pred`` is clamped to [0, 1]; reduces over ``dims`` (all but dim 0 by default)."""
    if dims is None:
        dims = tuple(range(1, pred.dim()))
    mse = (pred.clamp(0.0, 1.0) - target).pow(2).mean(dim=dims)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB from a mean squared error on [0, 1] images."""
    return -10.0 * torch.log10(mse.clamp_min(1e-12))
