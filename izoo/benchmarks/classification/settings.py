"""Classification run settings (defaults: the paper's CIFAR-10 recipe) and the choices they take."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from izoo.benchmarks.classification.augment import OPS
from izoo.errors import IzooError
from izoo.jsonargs import json_file_of, settings_from_json
from izoo.siren import model as siren

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
        """Settings from a JSON string, a path to a JSON file, or a dict; unknown keys are an error.

        ``augment`` is merged into its default (give only the keys that change), then the values are checked.
        """
        settings = settings_from_json(cls, text_or_path, "classification")
        settings.augment = {**cls().augment, **(settings.augment or {})}
        settings.validate((json_file_of(text_or_path) if isinstance(text_or_path, str) else None) or "--settings")
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
