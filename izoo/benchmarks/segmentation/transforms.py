"""Training augmentation done exactly in weight space: horizontal flips and zoom-in crops of the SIRENs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from izoo.siren import model as siren


def hflip_params(params: siren.Params, flip: torch.Tensor) -> siren.Params:
    """Mirror the INRs where ``flip`` ``[B]`` is true: negate the x column of the first layer's weight (exact)."""
    w = params[0].clone()
    w[flip, :, 0] = -w[flip, :, 0]
    return [w] + list(params[1:])


def zoom_crop(params: siren.Params, labels: torch.Tensor, ratio: torch.Tensor, offset: torch.Tensor,
              convention: str = siren.PIXEL_CENTERS) -> tuple[siren.Params, torch.Tensor]:
    """Resize by ``ratio`` ``[B]`` (≥ 1) and crop at ``offset`` ``[B, 2]``, exactly, in weight space.

    The crop shows original coordinates ``x / r + t``; since ``W (x / r + t) + b = (W / r) x + (b + W t)`` the first
    layer becomes ``(W / r, b + W t)``. Label maps are resampled at the same coordinates (nearest neighbour, on the
    INRs' ``convention`` grid as ``siren.coordinate_grid``). Zoom-out (r < 1) is not offered: it would query the INR
    outside the (-1, 1) square it was fitted on.
    """
    w, b = params[0], params[1]
    new_w = w / ratio[:, None, None]
    new_b = b + torch.einsum("boi,bi->bo", w, offset)
    height, width = labels.shape[-2:]
    grid = siren.coordinate_grid(height, width, device=labels.device, convention=convention)
    grid = grid.reshape(1, height, width, 2) / ratio[:, None, None, None] + offset[:, None, None, :]
    # grid_sample's align_corners=True puts ±1 on the border pixels' centres: the linspace grid
    resampled = F.grid_sample(labels[:, None].float(), grid, mode="nearest",
                              align_corners=convention == siren.LINSPACE_ENDPOINTS)
    return [new_w, new_b] + list(params[2:]), resampled[:, 0].round().long()
