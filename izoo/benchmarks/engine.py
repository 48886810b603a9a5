"""What every benchmark's training shares (MAE's ``engine_*`` / ``util/misc``): seeding, the optimiser step,
parameter counts and the confusion matrix. The device comes from ``izoo.devices.resolve_device``."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def train_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
               penalty: torch.Tensor | None = None, reg_weight: float = 1.0) -> None:
    """One optimiser step on ``loss`` (+ ``reg_weight`` × the tokenizer's ``penalty``), then one scheduler step."""
    total = loss if penalty is None else loss + reg_weight * penalty
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def count_params(module: nn.Module) -> int:
    """Trainable parameters (learnable tokenizer coordinates included)."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """``[C, C]`` int64 counts on the CPU, rows = ground truth, columns = prediction.

    Targets outside ``[0, C)`` (and ``ignore_index``) are not counted; predictions are clamped into ``[0, C)``.
    """
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    idx = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()
