"""Semantic-segmentation metrics over a confusion matrix (``benchmarks.engine.confusion_matrix``): IoU per class, mIoU.

Cityscapes convention: 19 train ids, label 255 = ignore (never counted). A class that occurs neither in the
ground truth nor in the predictions of the whole evaluation set has an undefined IoU and is left out of the mean,
as mmsegmentation (the SegFormer code base) does.
"""

from __future__ import annotations

import math

import torch

IGNORE_INDEX = 255

#: Cityscapes train-id class names (ids 0..18), as in cityscapesScripts' labels.py
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU of every class (``nan`` where the class is absent from both ground truth and predictions)."""
    conf = confusion.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU over classes with a defined IoU, in [0, 1] (``nan`` when nothing was labelled)."""
    ious = iou_per_class(confusion)
    valid = ~torch.isnan(ious)
    return float(ious[valid].mean()) if bool(valid.any()) else math.nan


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Fraction of labelled pixels predicted correctly."""
    total = confusion.sum()
    return float(confusion.diag().sum().double() / total) if int(total) > 0 else math.nan
