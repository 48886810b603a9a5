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

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from izoo.archive.layout import PHASES
from izoo.errors import IzooError

#: how the basic phase ends an item: after the whole budget, or at the first check past the gate
STOP_MODES = ("budget", "gate")

#: defaults of the ``fit:`` section (config.yaml documents the same values)
DEFAULT_FIT: dict[str, Any] = {
    "batch_size": 256,
    "iterations": 1000,
    "lr": 1.0e-3,
    "lr_min": 1.0e-5,
    "gate_psnr": 30.0,
    "check_every": 50,
    "stop": "budget",
    "min_iterations": 0,
    "extended": {"factor": 3, "patience": 300, "min_delta": 0.05},
    "until_threshold": {"cap_iterations": 20000},
    "checkpoint_every": 500,
    "device": "auto",
    "tf32": True,
    "compile": "auto",
}


def fit_config(fit_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``fit:`` section with every default filled in (nested sections merged key by key)."""
    merged = copy.deepcopy(DEFAULT_FIT)
    for key, value in (fit_cfg or {}).items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


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


def _positive_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 1:
        raise IzooError(f"fit.{name} must be a positive integer (got {value!r})", "config.yaml",
                        f"set fit.{name} to a whole number ≥ 1")
    return number


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
        raise IzooError(f"fit.{name} must be a whole number >= 0 (got {value!r})", "config.yaml",
                        f"set fit.{name} to a whole number of steps, e.g. 0")
    return int(value)


def phase_settings(fit_cfg: Mapping[str, Any] | None, phase: str) -> PhaseSettings:
    """``PhaseSettings`` of ``phase`` from a dataset's ``fit:`` section (defaults filled in)."""
    cfg = fit_config(fit_cfg)
    if phase not in PHASES:
        raise IzooError(f"unknown fitting phase {phase!r}", None, f"use one of {', '.join(PHASES)}")
    iterations = _positive_int(cfg["iterations"], "iterations")
    common = dict(lr=float(cfg["lr"]), lr_min=float(cfg["lr_min"]), gate_psnr=float(cfg["gate_psnr"]),
                  check_every=_positive_int(cfg["check_every"], "check_every"),
                  checkpoint_every=max(int(cfg.get("checkpoint_every") or 0), 0))
    if phase == "basic":
        stop = str(cfg.get("stop", "budget"))
        if stop not in STOP_MODES:
            raise IzooError(f"fit.stop must be one of {', '.join(STOP_MODES)} (got {cfg.get('stop')!r})", "config.yaml",
                            "set fit.stop to budget (train every item all iterations) or gate (stop at the gate)")
        min_steps = _non_negative_int(cfg.get("min_iterations", 0), "min_iterations")
        if min_steps > iterations:
            raise IzooError(f"fit.min_iterations ({min_steps}) is larger than fit.iterations ({iterations})",
                            "config.yaml", "set fit.min_iterations to at most fit.iterations (the cap)")
        return PhaseSettings(phase=phase, max_steps=iterations, schedule_steps=iterations,
                             stop_on_pass=stop == "gate", patience=None, min_delta=0.0, keep_best=False,
                             min_steps=min_steps, **common)
    if phase == "extended":
        ext = cfg["extended"]
        try:
            factor = float(ext.get("factor", 3))
        except (TypeError, ValueError):
            factor = -1.0
        if not factor > 0:
            raise IzooError(f"fit.extended.factor must be a positive number (got {ext.get('factor')!r})", "config.yaml",
                            "set fit.extended.factor to e.g. 3")
        steps = max(1, int(round(factor * iterations)))
        return PhaseSettings(phase=phase, max_steps=steps, schedule_steps=steps, stop_on_pass=True,
                             patience=_positive_int(ext.get("patience", 300), "extended.patience"),
                             min_delta=float(ext.get("min_delta", 0.05)), keep_best=True, **common)
    cap = _positive_int(cfg["until_threshold"].get("cap_iterations", 20000), "until_threshold.cap_iterations")
    return PhaseSettings(phase=phase, max_steps=cap, schedule_steps=cap, stop_on_pass=True, patience=None,
                         min_delta=0.0, keep_best=True, **common)
