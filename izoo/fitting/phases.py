"""Settings of the three quality-control phases (SPEC §2), derived from a dataset's ``fit:`` config.

* ``basic``: every item, Adam ``lr`` with a cosine schedule down to ``lr_min`` over ``iterations`` steps. With
  ``fit.stop: budget`` (the paper) every item trains all ``iterations`` steps and the last weights are kept; with
  ``fit.stop: gate`` an item leaves at the first check at which it has passed the gate, but never before
  ``fit.min_iterations`` steps, and ``iterations`` is only the cap (the released code's loop, the fast path).
* ``extended``: only items below the gate; continues from the basic weights with a fresh cosine schedule over
  up to ``factor × iterations`` steps; an item stops as soon as it passes the gate or its PSNR has not gained
  ``min_delta`` dB over ``patience`` steps. The best weights seen at a check are kept, so a phase never makes
  an item worse than it came in (a warm restart of the learning rate can dip the PSNR at first).
* ``until_threshold``: only items still failing; continues with a cosine schedule over ``cap_iterations`` steps
  and stops each item as soon as it passes; the cap is hard and items that hit it are reported as failing.

The paper leaves the refinement learning-rate schedule open; a warm restart plus keep-best is our choice.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from izoo.archive.layout import PHASES
from izoo.config import FitConfig
from izoo.errors import IzooError


def as_fit_config(fit_cfg: FitConfig | Mapping[str, Any] | None) -> FitConfig:
    """The parsed ``fit:`` section (a given ``FitConfig`` as is; a dict parsed, the schema's defaults filled)."""
    return fit_cfg if isinstance(fit_cfg, FitConfig) else FitConfig.parse(fit_cfg)


@dataclass(frozen=True)
class PhaseSettings:
    """How one phase trains a batch: step budget, schedule, stopping rules, checks and checkpoints."""

    phase: str
    max_steps: int            # steps an item may take in this phase
    schedule_steps: int       # length of the cosine schedule (lr → lr_min)
    lr: float
    lr_min: float
    gate_psnr: float
    check_every: int          # steps between PSNR checks (early stop, keep-best, progress)
    stop_on_pass: bool        # an item leaves the batch once it reaches the gate
    patience: int | None      # steps without a gain of ``min_delta`` dB after which an item stops (None: never)
    min_delta: float
    keep_best: bool           # return the best weights seen at a check instead of the last
    checkpoint_every: int     # steps between in-batch checkpoints (0: none)
    min_steps: int = 0        # no item stops on passing the gate before it took this many steps

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): cosine from ``lr`` to ``lr_min``, as ``CosineAnnealingLR``."""
        t = min(step, self.schedule_steps)
        return self.lr_min + (self.lr - self.lr_min) * (1.0 + math.cos(math.pi * t / max(self.schedule_steps, 1))) / 2.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, recorded in weight files."""
        return asdict(self)


def phase_settings(fit_cfg: FitConfig | Mapping[str, Any] | None, phase: str) -> PhaseSettings:
    """``PhaseSettings`` of ``phase`` from a dataset's ``fit:`` section (values checked by the schema)."""
    if phase not in PHASES:
        raise IzooError(f"unknown fitting phase {phase!r}", None, f"use one of {', '.join(PHASES)}")
    fit = as_fit_config(fit_cfg)
    common = dict(lr=float(fit.lr), lr_min=float(fit.lr_min), gate_psnr=float(fit.gate_psnr),
                  check_every=fit.check_every, checkpoint_every=fit.checkpoint_every)
    if phase == "basic":
        if fit.min_iterations > fit.iterations:
            raise IzooError(f"fit.min_iterations ({fit.min_iterations}) is larger than fit.iterations "
                            f"({fit.iterations})", "config.yaml",
                            "set fit.min_iterations to at most fit.iterations (the cap)")
        return PhaseSettings(phase=phase, max_steps=fit.iterations, schedule_steps=fit.iterations,
                             stop_on_pass=fit.stop == "gate", patience=None, min_delta=0.0, keep_best=False,
                             min_steps=fit.min_iterations, **common)
    if phase == "extended":
        steps = max(1, int(round(float(fit.extended.factor) * fit.iterations)))
        return PhaseSettings(phase=phase, max_steps=steps, schedule_steps=steps, stop_on_pass=True,
                             patience=fit.extended.patience, min_delta=float(fit.extended.min_delta),
                             keep_best=True, **common)
    cap = fit.until_threshold.cap_iterations
    return PhaseSettings(phase=phase, max_steps=cap, schedule_steps=cap, stop_on_pass=True, patience=None,
                         min_delta=0.0, keep_best=True, **common)
