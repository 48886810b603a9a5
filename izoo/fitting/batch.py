"""Fitting one batch of samples in one phase: streams of same-sized items, resumable from one checkpoint file.

Every family's ``fit_batch`` builds one ``StreamFit`` per item size and hands it to ``fit_in_streams``, which runs
them in order, hands finished items out in groups (``FitResult`` with parameters by name and positions in the
sample list) and keeps the resume state in a ``BatchCheckpoint``. ``item_seeds`` is the ``seed.mode`` rule that
picks each item's initialisation seed.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from izoo.atomic import atomic_path
from izoo.fitting.phases import PhaseSettings
from izoo.fitting.progress import emit
from izoo.fitting.stream import FitResult, ProgressFn

log = logging.getLogger(__name__)


def item_seeds(mode: str, base_seed: int, indices: Sequence[int]) -> list[int]:
    """Seeds for items: ``shared`` gives every item ``base_seed``; ``per_item`` gives ``base_seed + manifest index``."""
    if mode == "shared":
        return [int(base_seed)] * len(indices)
    if mode == "per_item":
        return [int(base_seed) + int(i) for i in indices]
    raise ValueError(f"seed mode must be 'shared' or 'per_item' (got {mode!r})")


class BatchCheckpoint:
    """In-batch resume state in one file (``torch.save``, written atomically) plus the stop request.

    ``load()`` returns the saved dict only if it was written for the same ``fingerprint``; a corrupt or foreign
    file is ignored with a warning (the batch then starts over, which gives the same result).
    """

    def __init__(self, path: str | Path | None, fingerprint: str = "",
                 should_stop: Callable[[], bool] | None = None, warn: Callable[[str], None] | None = None,
                 note: Callable[[str], None] | None = None):
        self.path = None if path is None else Path(path)
        self.fingerprint = fingerprint
        self._should_stop = should_stop
        self._warn = warn or log.warning
        #: the caller's own bookkeeping, saved with every state (``fit_shard``: groups written so far)
        self.meta: dict[str, Any] = {}
        self._loaded: dict[str, Any] | None = None
        self._note = note or log.info
        #: called after each save (``fit_shard`` announces the groups a saved state makes durable)
        self.after_save: Callable[[], None] | None = None

    def should_stop(self) -> bool:
        """Whether a signal or deadline asked the job to stop."""
        return bool(self._should_stop and self._should_stop())

    def load(self) -> dict[str, Any] | None:
        """The saved state of this job, or ``None`` (``meta`` is restored alongside; read once, then cached)."""
        if self._loaded is not None:
            return self._loaded["state"]
        if self.path is None or not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is refitted, never trusted
            self._warn(f"in-batch checkpoint {self.path} is unreadable ({type(exc).__name__}); starting the batch over")
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            self._warn(f"in-batch checkpoint {self.path} was made with other settings; starting the batch over")
            return None
        self._loaded = state
        self.meta = dict(state.get("meta") or {})
        self._note(f"resumed from its checkpoint {self.path}")
        return state["state"]

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically (a kill mid-write leaves the previous checkpoint)."""
        if self.path is None:
            return
        # serialised in memory first: torch.save's own error on a full disk does not say ENOSPC, a plain
        # file write's OSError does, so atomic_path turns it into the one-line disk-full error
        buffer = io.BytesIO()
        torch.save({"fingerprint": self.fingerprint, "state": state, "meta": dict(self.meta)}, buffer)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
        if self.after_save is not None:
            self.after_save()

    def clear(self) -> None:
        """Delete the checkpoint once the batch file is written."""
        self._loaded = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def same_size_units(shapes: Sequence[tuple[int, ...]]) -> list[list[int]]:
    """Positions grouped by item size, in order of first appearance (items of one size share a stream)."""
    units: dict[tuple[int, ...], list[int]] = {}
    for pos, shape in enumerate(shapes):
        units.setdefault(tuple(shape), []).append(pos)
    return list(units.values())


#: the per-item arrays of a ``FitResult`` besides its parameters (what a checkpoint stores for finished items)
_PER_ITEM = ("psnr_before", "psnr", "iterations", "seconds", "passed", "positions")


def _named(res: FitResult, names: Sequence[str], as_arrays: Callable[[Any], list[np.ndarray]],
           positions: Sequence[int]) -> FitResult:
    """A stream's result with parameters by name and positions in the caller's sample list."""
    local = res.positions if res.positions is not None else np.arange(len(res))
    return dataclasses.replace(res, params={k: np.asarray(v, dtype=np.float32)
                                            for k, v in zip(names, as_arrays(res.params))},
                               positions=np.asarray(positions, dtype=np.int64)[local])


def concat_fits(parts: Sequence[FitResult], names: Sequence[str]) -> FitResult:
    """One ``FitResult`` of several (parameters by name), sorted by position."""
    order = np.argsort(np.concatenate([p.positions for p in parts]), kind="stable")
    return FitResult(params={k: np.concatenate([p.params[k] for p in parts])[order] for k in names},
                     **{f: np.concatenate([getattr(p, f) for p in parts])[order] for f in _PER_ITEM})


def _fits_to_tensors(parts: Sequence[FitResult], names: Sequence[str]) -> dict[str, torch.Tensor] | None:
    """Finished items kept in memory, in the plain-tensor form a ``weights_only`` checkpoint accepts."""
    if not parts:
        return None
    whole = concat_fits(parts, names)
    out = {f: torch.from_numpy(np.ascontiguousarray(getattr(whole, f))) for f in _PER_ITEM}
    out.update({f"param:{k}": torch.from_numpy(np.ascontiguousarray(whole.params[k])) for k in names})
    return out


def _fits_from_tensors(saved: Mapping[str, torch.Tensor] | None, names: Sequence[str]) -> list[FitResult]:
    if not saved:
        return []
    return [FitResult(params={k: saved[f"param:{k}"].numpy() for k in names},
                      **{f: saved[f].numpy() for f in _PER_ITEM})]


def fit_in_streams(units: Sequence[Sequence[int]], make_fitter: Callable[[list[int]], Any], names: Sequence[str],
                   as_arrays: Callable[[Any], list[np.ndarray]], settings: PhaseSettings,
                   checkpoint: BatchCheckpoint | None, progress: ProgressFn | None,
                   on_group: Callable[[FitResult], None] | None) -> FitResult | None:
    """Run one stream (``make_fitter(positions)``, a ``StreamFit``) per unit of positions, in order, resumable.

    The checkpoint holds the unit in flight and its stream state; earlier units were handed to ``on_group``
    (or, without it, are kept in the checkpoint too).
    """
    checkpoint = checkpoint or BatchCheckpoint(None)
    saved = checkpoint.load() or {}
    first_unit = int(saved.get("unit", 0))
    collected = _fits_from_tensors(saved.get("collected"), names)

    for u in range(first_unit, len(units)):
        positions = list(units[u])
        fitter = make_fitter(positions)
        if u == first_unit and saved.get("engine") is not None:
            fitter.load_state(saved["engine"])

        def hand_out(res: FitResult, _pos: list[int] = positions) -> None:
            part = _named(res, names, as_arrays, _pos)
            if on_group is not None:
                on_group(part)
            else:
                collected.append(part)

        def save(state: dict[str, Any], _u: int = u) -> None:
            checkpoint.save({"unit": _u, "engine": state,
                             "collected": None if on_group is not None else _fits_to_tensors(collected, names)})

        fitter.run(should_stop=checkpoint.should_stop, on_checkpoint=save if checkpoint.path else None,
                   progress=progress, on_group=hand_out, group_size=fitter.slots, emit=emit)
    if on_group is not None:
        return None
    if not collected:
        empty = {k: np.zeros((0,), dtype=np.float32) for k in names}
        return FitResult(params=empty, psnr_before=np.zeros(0, np.float32), psnr=np.zeros(0, np.float32),
                         iterations=np.zeros(0, np.int64), seconds=np.zeros(0, np.float32),
                         passed=np.zeros(0, bool), positions=np.zeros(0, np.int64))
    return concat_fits(collected, names)


def finite_params(params: Mapping[str, np.ndarray]) -> bool:
    """All parameter values are finite (a check applied to batch files before reusing them)."""
    return all(bool(np.isfinite(v).all()) for v in params.values())
