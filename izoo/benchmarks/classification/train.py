"""One classification run: train on the train archive, evaluate on the test archive every epoch, and return the
result record (metrics, history, learned token coordinates, the no-learning majority-class reference)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import izoo
from izoo.benchmarks.classification.data import InrSplit
from izoo.benchmarks.classification.model import InrClassifier, build_classifier
from izoo.benchmarks.classification.settings import ClassificationSettings
from izoo.benchmarks.engine import confusion_matrix, count_params, seed_everything, train_step
from izoo.benchmarks.tokenizers import describe
from izoo.devices import resolve_device
from izoo.errors import IzooError

log = logging.getLogger(__name__)


def classification_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy, macro precision and macro F1 (classes never predicted count as precision 0, like sklearn).

    Computed from the confusion matrix because neither scikit-learn nor torchmetrics is a dependency.
    """
    confusion = confusion_matrix(pred, target, num_classes).double()
    true_pos = confusion.diag()
    predicted, actual = confusion.sum(0), confusion.sum(1)
    precision = torch.where(predicted > 0, true_pos / predicted.clamp(min=1), torch.zeros_like(true_pos))
    recall = torch.where(actual > 0, true_pos / actual.clamp(min=1), torch.zeros_like(true_pos))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(true_pos))
    present = actual > 0  # macro over the classes present in the test set
    return {
        "accuracy": float(true_pos.sum() / confusion.sum()),
        "precision": float(precision[present].mean()),
        "f1": float(f1[present].mean()),
    }


def majority_reference(train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """What no learning scores: predict the training split's most frequent class for every test item."""
    majority = int(torch.bincount(train_labels.cpu(), minlength=num_classes).argmax())
    metrics = classification_metrics(torch.full_like(test_labels.cpu(), majority), test_labels, num_classes)
    return {**metrics, "predicts": majority, "rule": "majority class of the train split"}


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int,
                   warmup_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step LR schedule: cosine to 0, linear warm-up then cosine (``warmup_cosine``), or constant."""
    sched = torch.optim.lr_scheduler
    if schedule == "constant":
        return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if schedule == "warmup_cosine":
        warmup_steps = max(1, min(warmup_steps, total_steps - 1))
        warm = sched.LinearLR(optimizer, start_factor=1.0 / warmup_steps, total_iters=warmup_steps)
        cosine = sched.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
        return sched.SequentialLR(optimizer, [warm, cosine], milestones=[warmup_steps])
    return sched.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))


def make_optimizer(model: InrClassifier, settings: ClassificationSettings) -> torch.optim.Optimizer:
    """Adam/AdamW with the tokenizer in its own group (``tokenizer_lr``, default ``lr``, never weight-decayed)."""
    groups = [{"params": list(model.vit.parameters()), "lr": settings.lr}]
    tok_params = [p for p in model.tokenizer.parameters() if p.requires_grad]
    if tok_params:
        groups.append({"params": tok_params, "lr": settings.tokenizer_lr or settings.lr, "weight_decay": 0.0})
    if settings.optimizer == "adamw":
        decay = 0.05 if settings.weight_decay is None else settings.weight_decay
        return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=decay)
    return torch.optim.Adam(groups, lr=settings.lr, weight_decay=settings.weight_decay or 0.0)


@torch.no_grad()
def evaluate(model: InrClassifier, split: InrSplit, batch_size: int, num_classes: int) -> dict[str, float]:
    """Test loss and metrics (no augmentation)."""
    model.eval()
    preds, targets, loss_sum = [], [], 0.0
    for params, labels in split.batches(batch_size, shuffle=False, generator=None):
        logits = model(params)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        preds.append(logits.argmax(1))
        targets.append(labels)
    metrics = classification_metrics(torch.cat(preds), torch.cat(targets), num_classes)
    metrics["loss"] = loss_sum / len(split)
    return metrics


def run_classification(train_path: str | Path, test_path: str | Path, tokenizer: str, seed: int,
                       settings: ClassificationSettings | None = None, device: str = "auto") -> dict[str, Any]:
    """Train one (tokenizer, seed) run and return its JSON-able result (metrics, history, learned coordinates)."""
    settings = settings or ClassificationSettings()
    dev = resolve_device(device)
    seed_everything(seed)
    started = time.time()
    train = InrSplit(train_path, dev, settings.max_train_items, settings.in_memory_gb, settings.loader_workers)
    test = InrSplit(test_path, dev, settings.max_test_items, settings.in_memory_gb, settings.loader_workers)
    if (dataclasses.astuple(train.spec), train.convention) != (dataclasses.astuple(test.spec), test.convention):
        raise IzooError(f"train and test archives hold different SIRENs ({train.spec}, {train.convention} vs "
                        f"{test.spec}, {test.convention})", test_path, "pass the train/test archives of the same dataset")
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    model = build_classifier(settings, tokenizer, num_classes, train.spec, seed, train.convention).to(dev)
    optimizer = make_optimizer(model, settings)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total_steps = settings.steps or settings.epochs * steps_per_epoch
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = int(round(settings.warmup_epochs * steps_per_epoch))
    scheduler = make_scheduler(optimizer, settings.schedule, total_steps, warmup)
    generator = torch.Generator().manual_seed(seed)
    eval_bs = settings.eval_batch_size or settings.batch_size
    initial_coords = model.tokenizer.coordinates().detach().cpu()
    history: list[dict[str, Any]] = []
    log.info("classification %s seed %d: %d train / %d test items, %d classes, %s on %s", tokenizer, seed,
             len(train), len(test), num_classes, settings.model, dev)
    final: dict[str, float] = {}
    step = 0
    for epoch in range(1, n_epochs + 1):
        model.train()
        epoch_start = time.time()
        loss_sum = penalty_sum = 0.0
        correct = seen = 0
        for params, labels in train.batches(settings.batch_size, True, generator, seed=seed * 100003 + epoch):
            if step == total_steps:  # ``steps`` may end training inside an epoch
                break
            step += 1
            logits = model(params, generator)
            loss = F.cross_entropy(logits, labels)
            penalty = model.tokenizer.penalty()
            train_step(optimizer, loss, scheduler, penalty, settings.reg_weight)
            loss_sum += float(loss.detach()) * len(labels)
            penalty_sum += float(penalty.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        if not math.isfinite(loss_sum):
            raise IzooError(f"training diverged (loss {loss_sum}) in epoch {epoch}", None,
                            "lower lr or tokenizer_lr in --settings")
        row: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                               "penalty": penalty_sum / seen, "lr": optimizer.param_groups[0]["lr"],
                               "seconds": time.time() - epoch_start}
        if epoch % max(1, settings.eval_every) == 0 or epoch == n_epochs:
            final = evaluate(model, test, eval_bs, num_classes)
            row.update({"test_loss": final["loss"], "test_acc": final["accuracy"], "test_f1": final["f1"]})
        history.append(row)
        log.info("epoch %d/%d: loss %.4f, train acc %.3f, test acc %s", epoch, n_epochs, row["train_loss"],
                 row["train_acc"], f"{row['test_acc']:.4f}" if "test_acc" in row else "-")
    coords = model.tokenizer.coordinates().detach().cpu()
    scales = model.tokenizer.scales()
    return {
        "task": "classification",
        "tokenizer": tokenizer,
        "seed": int(seed),
        "settings": dataclasses.asdict(settings),
        "accuracy": final["accuracy"],
        "precision": final["precision"],
        "f1": final["f1"],
        "test_loss": final["loss"],
        "chance": 1.0 / num_classes,
        "reference": majority_reference(train.labels, test.labels, num_classes),
        "steps": step,
        "epochs_run": n_epochs,
        "unlabelled_left_out": {"train": train.unlabelled, "test": test.unlabelled},
        "num_classes": num_classes,
        "train_items": len(train),
        "test_items": len(test),
        "train_archive": str(train_path),
        "test_archive": str(test_path),
        "inr": dataclasses.asdict(train.spec),
        "params": count_params(model),
        "tokenizer_info": describe(model.tokenizer),
        "history": history,
        "seconds": time.time() - started,
        "device": str(dev) if dev.type != "cuda" else f"cuda ({torch.cuda.get_device_name(dev)})",
        "izoo_version": izoo.__version__,
        "token_coordinates": {
            "patch": settings.patch,
            "initial": np.round(initial_coords.numpy(), 5).tolist(),
            "learned": np.round(coords.numpy(), 5).tolist(),
            "scales": None if scales is None else np.round(scales.detach().cpu().numpy(), 5).tolist(),
        },
    }
