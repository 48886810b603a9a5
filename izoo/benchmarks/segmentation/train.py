"""One segmentation run: train the segmenter on the train archive, evaluate on the test archive, and return the
result record (with the no-learning majority-class reference)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from izoo.archive.reader import InrArchive, open_archive
from izoo.benchmarks.engine import confusion_matrix, count_params, seed_everything, train_step
from izoo.benchmarks.segmentation.metrics import (CITYSCAPES_CLASSES, IGNORE_INDEX, iou_per_class, mean_iou,
                                                  pixel_accuracy)
from izoo.benchmarks.segmentation.model import InrSegmenter, count_gflops
from izoo.benchmarks.segmentation.settings import LABEL_EXTRAS, SEG_TOKENIZERS, SegSettings
from izoo.benchmarks.segmentation.transforms import hflip_params, zoom_crop
from izoo.benchmarks.tokenizers import DISPLAY_NAMES, describe
from izoo.devices import resolve_device
from izoo.errors import IzooError

log = logging.getLogger(__name__)


def _check_archive(arch: InrArchive, role: str) -> None:
    if arch.spec is None:
        raise IzooError(f"{role} archive holds {arch.model_family} INRs, not SIRENs", arch.path,
                        "pass the Cityscapes SIREN archive (results/cityscapes/archive/<split>.h5)")
    if "label_map" not in arch.extra_names:
        raise IzooError(f"{role} archive has no label_map extra (extras: {arch.extra_names})", arch.path,
                        "build it from a segmentation dataset (cityscapes format), whose items carry label maps")


def _labels(batch: Mapping[str, Any], name: str, device: torch.device) -> torch.Tensor:
    return batch[name].to(device=device, dtype=torch.long)


def _cycle(arch: InrArchive, batch_size: int, seed: int, workers: int = 0, pin_memory: bool = False):
    """Endless shuffled batches (a new permutation every pass); drops a ragged last batch when the set allows."""
    drop_last = len(arch) >= batch_size
    loader = arch.dataloader(batch_size=batch_size, shuffle=True, drop_last=drop_last, seed=seed,
                             num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0)
    while True:
        for batch in loader:
            yield batch


def evaluate(model: InrSegmenter, arch: InrArchive, settings: SegSettings, w0: float) -> dict[str, Any]:
    """Confusion-matrix metrics on every label-map extra of ``arch`` (fine, and coarse when present)."""
    device = next(model.parameters()).device
    names = [n for n in LABEL_EXTRAS if n in arch.extra_names]
    confusions = {n: torch.zeros(settings.num_classes, settings.num_classes, dtype=torch.long) for n in names}
    model.eval()
    with torch.no_grad():
        for batch in arch.dataloader(batch_size=settings.eval_batch_size, shuffle=False,
                                     num_workers=settings.loader_workers, pin_memory=device.type == "cuda"):
            params = [p.to(device) for p in batch["params"]]
            logits = model(params, w0)
            for name in names:
                target = _labels(batch, name, device)
                up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
                confusions[name] += confusion_matrix(up.argmax(1), target, settings.num_classes, IGNORE_INDEX)
    model.train()
    out: dict[str, Any] = {}
    class_names = CITYSCAPES_CLASSES if settings.num_classes == len(CITYSCAPES_CLASSES) else \
        tuple(str(c) for c in range(settings.num_classes))
    for name in names:
        tag = LABEL_EXTRAS[name]
        out[f"miou_{tag}"] = mean_iou(confusions[name])
        out[f"pixel_acc_{tag}"] = pixel_accuracy(confusions[name])
        out[f"iou_{tag}"] = {c: (None if math.isnan(v) else v)
                             for c, v in zip(class_names, iou_per_class(confusions[name]).tolist())}
    return out


def class_histogram(arch: InrArchive, name: str, num_classes: int, chunk: int = 256) -> torch.Tensor:
    """Pixels per class ``[C]`` over every label map ``name`` of ``arch`` (ignore pixels left out)."""
    hist = torch.zeros(num_classes, dtype=torch.long)
    for start in range(0, len(arch), chunk):
        maps = torch.from_numpy(np.asarray(arch.extras(name, slice(start, min(len(arch), start + chunk))))).long()
        maps = maps[maps < num_classes]
        hist += torch.bincount(maps.reshape(-1), minlength=num_classes)
    return hist


def majority_reference(train: InrArchive, test: InrArchive, settings: SegSettings) -> dict[str, Any]:
    """What no learning scores: the train split's most frequent class predicted for every test pixel."""
    majority = int(class_histogram(train, "label_map", settings.num_classes).argmax())
    out: dict[str, Any] = {"predicts": majority, "rule": "majority class of the train split's pixels"}
    for name, tag in LABEL_EXTRAS.items():
        if name in test.extra_names:
            confusion = torch.zeros(settings.num_classes, settings.num_classes, dtype=torch.long)
            confusion[:, majority] = class_histogram(test, name, settings.num_classes)
            out[f"miou_{tag}"] = mean_iou(confusion)
            out[f"pixel_acc_{tag}"] = pixel_accuracy(confusion)
    return out


def train_segmentation(train_path: str | Path, test_path: str | Path, tokenizer: str, seed: int = 0,
                       settings: SegSettings | None = None) -> dict[str, Any]:
    """Train the segmenter on the train archive, evaluate on the test archive; returns the result record."""
    settings = settings or SegSettings()
    if tokenizer not in SEG_TOKENIZERS:
        raise IzooError(f"unknown segmentation tokenizer {tokenizer!r}", None, f"use one of {', '.join(SEG_TOKENIZERS)}")
    device = resolve_device(settings.device)
    seed_everything(seed)
    train = open_archive(train_path, device="cpu", in_memory=settings.in_memory)
    test = open_archive(test_path, device="cpu", in_memory=settings.in_memory)
    _check_archive(train, "train")
    _check_archive(test, "test")
    if train.coordinate_convention != test.coordinate_convention:
        raise IzooError(f"train and test archives use different coordinate conventions ({train.coordinate_convention} "
                        f"vs {test.coordinate_convention})", test_path, "pass the train/test archives of one dataset")
    w0 = train.spec.w0
    convention = train.coordinate_convention
    model = InrSegmenter(settings, tokenizer, seed=seed, convention=convention).to(device)
    optimiser = torch.optim.AdamW(model.parameter_groups(settings), weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.PolynomialLR(optimiser, total_iters=settings.steps, power=settings.poly_power)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    gen = torch.Generator().manual_seed(seed)
    batches = _cycle(train, settings.batch_size, seed, settings.loader_workers, device.type == "cuda")
    start = time.time()
    losses: list[float] = []
    model.train()
    for step in range(settings.steps):
        batch = next(batches)
        params = [p.to(device) for p in batch["params"]]
        target = _labels(batch, "label_map", device)
        if settings.hflip:
            flip = torch.rand(target.shape[0], generator=gen) < 0.5
            params = hflip_params(params, flip.to(device))
            target = torch.where(flip.to(device)[:, None, None], target.flip(-1), target)
        lo, hi = settings.zoom_range
        if hi > 1.0:
            if lo < 1.0:
                raise IzooError(f"zoom_range {settings.zoom_range} zooms out", None,
                                "use ratios >= 1 (zoom-out would query the INR outside its domain)")
            ratio = lo + (hi - lo) * torch.rand(target.shape[0], generator=gen)
            offset = (torch.rand(target.shape[0], 2, generator=gen) * 2 - 1) * (1 - 1 / ratio[:, None])
            params, target = zoom_crop(params, target, ratio.to(device), offset.to(device), convention)
        logits = model(params, w0)
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss = criterion(logits, target)
        penalty = model.tokenizer.penalty()
        train_step(optimiser, loss, schedule, penalty, settings.reg_weight)
        losses.append(float(loss.detach()))
        if settings.log_every and (step + 1) % settings.log_every == 0:
            log.info("step %d/%d loss %.4f penalty %.4f", step + 1, settings.steps, float(loss), float(penalty))
    train_seconds = time.time() - start
    metrics = evaluate(model, test, settings, w0)
    flops = count_gflops(model, [p[:1].to(device) for p in train.params_batch([0])], w0)
    return {
        "task": "segmentation",
        "tokenizer": tokenizer,
        "tokenizer_name": DISPLAY_NAMES[tokenizer],
        "seed": seed,
        "settings": dataclasses.asdict(settings),
        "train_archive": str(train_path),
        "test_archive": str(test_path),
        "dataset": train.attrs.get("dataset"),
        "n_train": len(train),
        "n_test": len(test),
        "inr": train.attrs.get("architecture"),
        "tokenizer_info": describe(model.tokenizer),
        "params": count_params(model),
        "params_m": count_params(model) / 1e6,
        **flops,
        **metrics,
        "reference": majority_reference(train, test, settings),
        "final_train_loss": float(np.mean(losses[-10:])) if losses else None,
        "train_seconds": train_seconds,
        "device": str(device),
        "torch": torch.__version__,
        "timm": timm.__version__,
    }
