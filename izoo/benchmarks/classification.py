"""INR classification: query each INR through a (learnable) tokenizer and classify the tokens with a timm ViT.

One run = one (tokenizer, seed): ``run_classification(train, test, tokenizer, seed, settings)`` trains
on the train archive, evaluates on the test archive every epoch and returns a JSON-able result
(accuracy, macro precision, macro F1, history, learned token coordinates). ``izoo bench-classify`` wraps it.

Defaults are the paper's CIFAR-10 settings (ViT-tiny, patch 4, batch 512, 200 epochs, Adam 1e-4,
cosine, RandAugment N=2 M=9, LP+reg weight 1). The ImageNet-100 recipe (paper §5.2 and supplementary §7.3.1)
is ``model: vit_base``, ``patch: 16``, ``image_size: 224``, ``batch_size: 32``, ``steps: 8000``,
``optimizer: adamw``, ``lr: 1e-5`` (model and tokenizer), ``schedule: warmup_cosine`` with
``warmup_epochs: 1``, ``input_norm: inception`` (the augreg 21k→1k ViT-B expects mean = std = 0.5) and
``checkpoint: <local file>`` (never downloaded).

Every result also carries a ``reference`` entry: the metrics of a model that learns nothing (it predicts the
training split's most frequent class for every test item), computed on the same test split.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

import izoo
import izoo.archive
from izoo.atomic import atomic_path
from izoo.benchmarks.augment import OPS, RandAugmentINR, query_augmented
from izoo.benchmarks.tokenizers import TOKENIZERS, CoordinateTokenizer, describe
from izoo.errors import IzooError
from izoo.jsonargs import json_file_of, load_json_object
from izoo.siren import model as siren

log = logging.getLogger(__name__)

#: short model names → timm architectures (any other timm ViT name is accepted as is)
MODEL_NAMES = {
    "vit_tiny": "vit_tiny_patch16_224",    # depth 12, 3 heads, dim 192
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",    # depth 12, 12 heads, dim 768
}
SCHEDULES = ("cosine", "warmup_cosine", "constant")
#: the ViT's input normalisation: the SIRENs' own (ImageNet mean/std, what they were fitted in) or timm's
#: "inception" mean = std = 0.5, which the augreg ViT checkpoints were trained with
INPUT_NORMS = {"imagenet": (siren.IMAGENET_MEAN, siren.IMAGENET_STD), "inception": ((0.5,) * 3, (0.5,) * 3)}
OPTIMIZERS = ("adam", "adamw")


@dataclass
class ClassificationSettings:
    """Training settings of one classification run (defaults: the paper's CIFAR-10-INR setting)."""

    model: str = "vit_tiny"
    patch: int = 4
    epochs: int = 200
    steps: int | None = None                 # total optimiser steps; overrides epochs (ImageNet-100: 8,000)
    batch_size: int = 512
    lr: float = 1e-4
    optimizer: str = "adam"
    schedule: str = "cosine"
    augment: dict = field(default_factory=lambda: {"n_ops": 2, "magnitude": 9, "enabled": True})  # + "ops": [...]
    checkpoint: str | None = None
    image_size: int = 32
    tokenizer_lr: float | None = None
    reg_weight: float = 1.0
    weight_decay: float | None = None        # None: 0 for adam, 0.05 for adamw
    warmup_epochs: float = 1.0               # warmup_cosine only (the paper: one warm-up epoch)
    model_kwargs: dict = field(default_factory=dict)  # extra timm kwargs, e.g. a tiny ViT for tests
    eval_batch_size: int | None = None
    eval_every: int = 1                      # evaluate on the test archive every k epochs (and after the last)
    max_train_items: int | None = None       # use only the first k items (quick looks; recorded in the result)
    max_test_items: int | None = None
    in_memory_gb: float = 8.0                # archives up to this size are held on the device whole
    loader_workers: int = 0                  # DataLoader worker processes reading larger archives (0: in-process)
    amp: bool = True                         # bfloat16 autocast for the ViT on CUDA (the SIREN query stays fp32)
    input_norm: str = "imagenet"             # the ViT input's normalisation (INPUT_NORMS)

    @classmethod
    def from_json(cls, text_or_path: str | Mapping[str, Any] | None) -> "ClassificationSettings":
        """Settings from a JSON string, a path to a JSON file, or a dict; unknown keys are an error."""
        if text_or_path is None or text_or_path == "":
            return cls()
        source = (json_file_of(text_or_path) if isinstance(text_or_path, str) else None) or "--settings"
        raw = dict(text_or_path) if isinstance(text_or_path, Mapping) else load_json_object(str(text_or_path))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise IzooError(f"unknown classification settings {unknown}", source,
                            f"use only {', '.join(sorted(known))}")
        settings = cls(**{**dataclasses.asdict(cls()), **raw})
        settings.augment = {**cls().augment, **(settings.augment or {})}
        settings.validate(source)
        return settings

    def validate(self, source: str = "--settings") -> None:
        """Check values a user can get wrong; raise a one-line ``IzooError``."""
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS} (got {self.optimizer!r})")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES} (got {self.schedule!r})")
        if self.image_size % self.patch:
            problems.append(f"image_size {self.image_size} is not a multiple of patch {self.patch}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or (self.steps is not None and self.steps < 1):
            problems.append("epochs, steps, batch_size and lr must be positive")
        if self.input_norm not in INPUT_NORMS:
            problems.append(f"input_norm must be one of {tuple(INPUT_NORMS)} (got {self.input_norm!r})")
        if not 0 <= float(self.augment.get("magnitude", 9)) <= 10:
            problems.append("augment.magnitude must be in [0, 10] (RandAugment scale)")
        bad_ops = [op for op in self.augment.get("ops") or () if op not in OPS]
        if bad_ops:
            problems.append(f"augment.ops {bad_ops} unknown (known: {', '.join(OPS)})")
        if self.checkpoint and not Path(self.checkpoint).is_file():
            problems.append(f"checkpoint file {self.checkpoint} does not exist (it is never downloaded)")
        if problems:
            raise IzooError("; ".join(problems), source, "fix the classification settings")


# -- data ------------------------------------------------------------------------------------------------------

class InrSplit:
    """One archive split for training: labels, SIREN spec, and parameter batches (on the device when small)."""

    def __init__(self, path: str | Path, device: torch.device, max_items: int | None, in_memory_gb: float,
                 loader_workers: int = 0):
        self.path = Path(path)
        self.device = device
        archive = izoo.archive.open(self.path, device="cpu")
        if archive.spec is None:
            raise IzooError(f"classification needs SIREN INRs, not {archive.model_family!r}", self.path,
                            "pass a 2D image archive (e.g. results/cifar10/archive/train.h5)")
        self.spec = archive.spec
        self.convention = archive.coordinate_convention
        self.loader_workers = int(loader_workers)
        if len(archive) == 0:
            raise IzooError("archive has no items", self.path, "rerun the merge that writes it")
        all_labels = np.asarray(archive.labels)
        # items without a class (label -1, e.g. the ImageNet test images) are archived but cannot be classified
        self.rows = np.flatnonzero(all_labels >= 0)
        self.unlabelled = int(len(all_labels) - len(self.rows))
        if max_items is not None:
            self.rows = self.rows[: int(max_items)]
        self.n = len(self.rows)
        if self.n == 0:
            raise IzooError(f"archive has no labelled items ({self.unlabelled} items carry label -1)", self.path,
                            "classification needs a labelled split (train/val, not the unlabelled test split)")
        if self.unlabelled:
            log.info("%s: %d items without a class label (-1) left out", self.path, self.unlabelled)
        self.labels = torch.as_tensor(all_labels[self.rows], dtype=torch.long)
        self.in_memory = 4 * self.spec.n_params() * self.n <= in_memory_gb * (1 << 30)
        self._archive = None
        self.params: siren.Params | None = None
        if self.in_memory:  # demo/CIFAR scale: hold every weight on the device, batches are plain indexing
            contiguous = self.rows[-1] + 1 == self.n  # the common case: rows 0..n-1, one slice read
            self.params = [p.to(device) for p in archive.params_batch(slice(0, self.n) if contiguous
                                                                      else self.rows.tolist())]
            archive.close()
        else:               # ImageNet scale: stream contiguous runs through the archive's DataLoader
            self._archive = archive
        self.labels = self.labels.to(device)

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                seed: int = 0) -> Iterator[tuple[siren.Params, torch.Tensor]]:
        """``(params, labels)`` batches on the device; shuffled each call when asked."""
        if self.params is not None:
            order = torch.randperm(self.n, generator=generator) if shuffle else torch.arange(self.n)
            order = order.to(self.device)
            for start in range(0, self.n, batch_size):
                rows = order[start:start + batch_size]
                yield [p[rows] for p in self.params], self.labels[rows]
            return
        loader = self._archive.dataloader(batch_size=batch_size, shuffle=shuffle, seed=seed,
                                          indices=self.rows, with_extras=False,
                                          num_workers=self.loader_workers, pin_memory=self.device.type == "cuda")
        for batch in loader:
            yield [p.to(self.device, non_blocking=True) for p in batch["params"]], batch["label"].to(self.device)


# -- model -----------------------------------------------------------------------------------------------------

def load_checkpoint_into(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a local timm/torch ViT checkpoint; the class head is skipped when its shape differs, pos-embed resampled."""
    from timm.layers import resample_abs_pos_embed
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path), use_ema=True, device="cpu")
    except Exception as exc:  # torch/safetensors raise many types for a bad file; all mean the same to the user
        raise IzooError(f"cannot read the checkpoint ({type(exc).__name__}: {exc})", path,
                        "pass a torch .pth/.pt or .safetensors state dict of a timm ViT") from exc
    own = model.state_dict()
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        prefix = getattr(model, "num_prefix_tokens", 1)
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(model.patch_embed.grid_size),
                                                    num_prefix_tokens=prefix)
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for key in skipped:
        del state[key]
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped]
    if [k for k in missing if not k.startswith("head")]:
        raise IzooError(f"checkpoint does not fit the model (missing {missing[:4]}...)", path,
                        "pass a checkpoint of the same ViT architecture as settings.model")
    return {"skipped": skipped, "missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


def build_vit(settings: ClassificationSettings, num_classes: int) -> nn.Module:
    """timm ViT with a conv patch embedding (kernel = stride = patch) over the queried ``[B, 3, S, S]`` input."""
    name = MODEL_NAMES.get(settings.model, settings.model)
    try:
        vit = timm.create_model(name, pretrained=False, img_size=settings.image_size, patch_size=settings.patch,
                                num_classes=num_classes, **settings.model_kwargs)
    except (RuntimeError, TypeError) as exc:
        raise IzooError(f"cannot build model {settings.model!r} ({exc})", None,
                        f"use one of {sorted(MODEL_NAMES)} or a timm ViT name, with valid model_kwargs") from exc
    if settings.checkpoint:
        info = load_checkpoint_into(vit, settings.checkpoint)
        log.info("loaded %s (re-initialised: %s)", settings.checkpoint, info["skipped"] or "nothing")
    return vit


class InrClassifier(nn.Module):
    """Tokenizer (query coordinates) → optional differentiable RandAugment → timm ViT."""

    def __init__(self, tokenizer: CoordinateTokenizer, vit: nn.Module, w0: float,
                 augment: RandAugmentINR | None = None, amp: bool = True, input_norm: str = "imagenet"):
        super().__init__()
        self.tokenizer, self.vit, self.w0, self.augment, self.amp = tokenizer, vit, float(w0), augment, amp
        # x_vit = a * x_siren + b maps the SIRENs' ImageNet normalisation to the ViT's (identity for imagenet)
        mean, std = (torch.tensor(v).view(3, 1, 1) for v in INPUT_NORMS[input_norm])
        siren_mean, siren_std = (torch.tensor(v).view(3, 1, 1) for v in INPUT_NORMS["imagenet"])
        self.register_buffer("norm_scale", siren_std / std, persistent=False)
        self.register_buffer("norm_shift", (siren_mean - mean) / std, persistent=False)
        self.renormalise = input_norm != "imagenet"

    def query(self, params: siren.Params, generator: torch.Generator | None = None) -> torch.Tensor:
        """The grouped ``[B, 3, H, W]`` ViT input (augmented in training mode)."""
        coords = self.tokenizer.coordinates().reshape(-1, 2)
        augment = self.augment if self.training else None
        return query_augmented(params, coords, self.w0, self.tokenizer.height, self.tokenizer.width, augment,
                               generator)

    def forward(self, params: siren.Params, generator: torch.Generator | None = None) -> torch.Tensor:
        """Class logits ``[B, classes]``."""
        images = self.query(params, generator)
        if self.renormalise:
            images = images * self.norm_scale + self.norm_shift
        use_amp = self.amp and images.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            return self.vit(images).float()


def build_classifier(settings: ClassificationSettings, tokenizer: str, num_classes: int, spec: siren.SirenSpec,
                     seed: int = 0, convention: str = siren.PIXEL_CENTERS) -> InrClassifier:
    """The full model of one run (seeded: same seed, same initial weights and LP+rand grouping)."""
    if tokenizer not in TOKENIZERS:
        raise IzooError(f"unknown tokenizer {tokenizer!r}", None, f"use one of {', '.join(TOKENIZERS)}")
    torch.manual_seed(seed)
    size = settings.image_size
    tok = CoordinateTokenizer(tokenizer, size, size, settings.patch, seed=seed, convention=convention)
    aug_cfg = settings.augment
    augment = None
    if aug_cfg.get("enabled", True) and int(aug_cfg.get("n_ops", 2)) > 0:
        ops = tuple(aug_cfg.get("ops") or OPS)
        augment = RandAugmentINR(int(aug_cfg.get("n_ops", 2)), float(aug_cfg.get("magnitude", 9)), ops)
    return InrClassifier(tok, build_vit(settings, num_classes), spec.w0, augment, settings.amp, settings.input_norm)


# -- metrics ---------------------------------------------------------------------------------------------------

def classification_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy, macro precision and macro F1 (classes never predicted count as precision 0, like sklearn).

    Hand-written from the confusion matrix because neither scikit-learn nor torchmetrics is a dependency.
    """
    pred, target = pred.cpu().long(), target.cpu().long()
    confusion = torch.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes,
                                                                                                 num_classes)
    confusion = confusion.double()
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


# -- training --------------------------------------------------------------------------------------------------

def majority_reference(train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """What no learning scores: predict the training split's most frequent class for every test item."""
    majority = int(torch.bincount(train_labels.cpu(), minlength=num_classes).argmax())
    metrics = classification_metrics(torch.full_like(test_labels.cpu(), majority), test_labels, num_classes)
    return {**metrics, "predicts": majority, "rule": "majority class of the train split"}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise IzooError("CUDA was asked for but no GPU is visible", None, "use --device auto or --device cpu")
    return device


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


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


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
            total = loss + settings.reg_weight * penalty
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
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
        "params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
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


def write_result(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write one run's result JSON atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    return path
