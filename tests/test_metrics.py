"""``izoo.metrics.psnr`` against an independent NumPy reference (what fitting reports and ``izoo verify`` re-checks)."""

from __future__ import annotations

import numpy as np
import torch

from izoo.metrics import psnr


def _reference_psnr(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """PSNR of [0, 1] images per item, the prediction clipped to the displayable range first (SPEC §2)."""
    err = (np.clip(pred.astype(np.float64), 0.0, 1.0) - target.astype(np.float64)) ** 2
    return 10.0 * np.log10(1.0 / err.reshape(len(err), -1).mean(axis=1))


def test_psnr_clamps_the_prediction_to_0_1():
    rng = np.random.default_rng(3)
    target = rng.uniform(0.0, 1.0, (3, 3, 8, 8)).astype(np.float32)
    target[:, :, :2] = 1.0   # saturated pixels: an overshooting prediction there is displayed as exactly 1
    target[:, :, 2:4] = 0.0
    pred = target + rng.normal(0.0, 0.05, target.shape).astype(np.float32)
    pred[:, :, :2] += 0.3    # overshoots above 1 and below 0 that the clamp removes
    pred[:, :, 2:4] -= 0.3
    got = psnr(torch.from_numpy(pred), torch.from_numpy(target)).numpy()
    np.testing.assert_allclose(got, _reference_psnr(pred, target), rtol=1e-5)
    unclamped = 10.0 * np.log10(1.0 / ((pred - target) ** 2).reshape(3, -1).mean(axis=1))
    assert (got > unclamped + 1.0).all()   # the clamp matters here by more than a dB


def test_psnr_of_a_perfect_prediction_is_capped_not_infinite():
    image = torch.rand(2, 3, 4, 4)
    assert torch.isfinite(psnr(image, image)).all() and (psnr(image, image) == 120.0).all()
