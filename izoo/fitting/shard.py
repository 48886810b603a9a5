"""Fit a shard (or a refinement job) as one stream, resumable from its work directory and safe under SLURM signals.

The job's items stream through ``fit.batch_size`` slots (continuous batching, ``izoo.fitting.stream``): an item
that finishes frees its slot for the next one at once. Work directory layout (never declared to Snakemake):

* ``group-00000.h5`` … finished items, handed out in groups of about ``batch_size`` (in the order they finished)
  and written atomically as INR files (``izoo.archive.layout``) carrying a ``work_fingerprint`` attribute (model,
  seed, fit settings, phase, item indices and init files) and the group's phase report as extras
  ``phase_report.{psnr_before,iterations,seconds}`` (datasets, not attributes: HDF5 attributes are limited to
  64 KiB); they are left out of the job's weights file;
* ``job.ckpt`` the in-flight state (slots, queue position, groups written so far) every ``checkpoint_every``
  steps and on a stop request; finished items not yet in a group are written out as one first.

A restarted job reuses the groups its checkpoint counts, after each reads back with the right fingerprint, items
and finite weights; anything else is refitted with a warning. Fitting is deterministic (full batch over all
pixels, fixed seeds, the slot composition replayed from the checkpoint), so a resumed job produces bitwise the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
import torch

from izoo.archive import layout
from izoo.config import DatasetConfig, dataset_config
from izoo.datasets import manifest
from izoo.errors import IzooError
from izoo.fitting import learned_init, psnr_report
from izoo.fitting.batch import BatchCheckpoint, finite_params, item_seeds
from izoo.fitting.device import default_device
from izoo.fitting.families import get_family
from izoo.fitting.phases import phase_settings
from izoo.fitting.progress import ProgressMeter, emit
from izoo.fitting.stream import FitInterrupted, FitResult

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: the job saved its progress and should be resubmitted
PHASE_REPORT = "phase_report."   # prefix of the per-group report extras (work dir only)
JOB_CHECKPOINT = "job.ckpt"      # the in-flight state of a job (slots, queue, groups written)


class StopControl:
    """Turns SIGTERM/SIGUSR1 (what SLURM sends before a time limit), SIGINT (Ctrl-C) and a runtime deadline into
    a stop request. A second Ctrl-C after the first raises ``KeyboardInterrupt`` (the user insists)."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None),
                                getattr(signal, "SIGINT", None)) if s is not None)

    def __init__(self, runtime_minutes: float | None = None):
        self.deadline = None
        if runtime_minutes:
            limit = float(runtime_minutes) * 60.0
            self.deadline = time.monotonic() + max(limit - 90.0, 0.8 * limit)
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopControl":
        """Catch the signals (only the main thread may do so; elsewhere only the deadline applies)."""
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:
                break
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before ``install``."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT and self.reason is not None:
            raise KeyboardInterrupt
        self.reason = f"signal {signal.Signals(signum).name}"

    def should_stop(self) -> bool:
        """True once a signal arrived or the deadline passed."""
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "runtime limit (--runtime-minutes) nearly reached"
        return self.reason is not None


@dataclass
class ShardOutput:
    """Everything a job writes: the weights file's content and the phase's PSNR report."""

    params: dict[str, np.ndarray]
    items: pd.DataFrame
    extras: dict[str, np.ndarray]
    attrs: dict[str, Any]
    report: pd.DataFrame
    shared_init: dict[str, np.ndarray] | None = None   # the learned init the items started from, if any

    def write(self, weights_path: str | Path, report_path: str | Path) -> None:
        """Write the report CSV, then the weights file, each atomically: the weights file (the job's product)
        exists only once its report does, so a job killed between the two never looks finished."""
        psnr_report.write(self.report, report_path)
        layout.write_inr_file(weights_path, self.params, self.items, self.attrs, self.extras, self.shared_init)


def fingerprint(dataset_cfg: DatasetConfig | Mapping[str, Any], phase: str, items: pd.DataFrame) -> str:
    """Hash of what determines a batch's weights: the INR-defining settings (``DatasetConfig.inr_settings``, the
    workflow's fit params too), the phase, the items, their init files and the learned init's content."""
    cfg = dataset_config(dataset_cfg)
    payload = {"settings": cfg.inr_settings(), "phase": phase, "index": [int(i) for i in items["index"]],
               "init": [str(p) for p in items["init"]] if "init" in items else [],
               "learned_init": learned_init.init_file_sha256(cfg.model.to_dict())}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def read_init_rows(path: str | Path, indices: Sequence[int], names: Sequence[str]) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Parameters and item rows of ``indices`` (manifest indices) from an INR file, in the given order."""
    path = Path(path)
    if not path.exists():
        raise IzooError("init weights file of a refinement job is missing", path,
                        "rerun the previous phase's job that writes it")
    try:
        with h5py.File(path, "r") as h5:
            file_index = h5["items/index"][:]
            pos = {int(v): k for k, v in enumerate(file_index)}
            missing = [i for i in indices if int(i) not in pos]
            if missing:
                raise IzooError(f"items {missing[:5]} are not in this weights file", path,
                                "rebuild the refinement plan (izoo plan-refinement) from the current reports")
            rows = np.array([pos[int(i)] for i in indices])
            order = np.argsort(rows)
            inverse = np.argsort(order)
            sorted_rows = rows[order]
            params = {name: h5[f"params/{name}"][sorted_rows][inverse] for name in names}
            items = layout.read_items(h5).iloc[rows].reset_index(drop=True)
    except IzooError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise IzooError(f"init weights file is corrupt or truncated ({type(exc).__name__}: {exc})", path,
                        "rerun the previous phase's job that writes it") from exc
    return params, items


def _load_init(batch: pd.DataFrame, names: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Init params of a refinement batch plus the iterations/seconds the items already spent."""
    n = len(batch)
    params: dict[str, np.ndarray] = {}
    prev_iters = np.zeros(n, dtype=np.int64)
    prev_secs = np.zeros(n, dtype=np.float64)
    for path, group in batch.groupby("init", sort=False):
        where = np.flatnonzero((batch["init"] == path).to_numpy())
        p, rows = read_init_rows(path, group["index"].tolist(), names)
        for name, value in p.items():
            if name not in params:
                params[name] = np.zeros((n, *value.shape[1:]), dtype=np.float32)
            params[name][where] = value
        prev_iters[where] = rows["iterations"].to_numpy()
        prev_secs[where] = rows["seconds"].to_numpy()
    return params, prev_iters, prev_secs


def _verify_group(path: Path, fp: str, items: pd.DataFrame, shapes: Mapping[str, tuple]) -> tuple[layout.InrFile | None, str]:
    """The group file if it can be reused, else ``None`` and why."""
    try:
        inr = layout.read_inr_file(path)
    except IzooError as exc:
        return None, exc.what
    if inr.attrs.get("work_fingerprint") != fp:
        return None, "it was made with other settings or items"
    ids = dict(zip(items["index"].astype(int), items["item_id"].astype(str)))
    if not set(inr.items["index"].tolist()) <= set(ids):
        return None, "its items are not items of this job"
    if [ids[int(i)] for i in inr.items["index"]] != inr.items["item_id"].astype(str).tolist():
        return None, "its item ids differ from the manifest's (the manifest was rebuilt)"
    for name, shape in shapes.items():
        if name not in inr.params or tuple(inr.params[name].shape) != (len(inr.items), *shape):
            return None, f"params/{name} is missing or has the wrong shape"
    if not finite_params(inr.params):
        return None, "it holds non-finite weights"
    if any(f"{PHASE_REPORT}{k}" not in inr.extras for k in ("psnr_before", "iterations", "seconds")):
        return None, "its phase report is missing"
    return inr, ""


def fit_shard(items: pd.DataFrame, load_sample: Callable[[Mapping[str, Any]], Any],
              dataset_cfg: DatasetConfig | Mapping[str, Any],
              workdir: str | Path, phase: str, *, dataset: str = "", stop: StopControl | None = None,
              device: torch.device | str | None = None) -> ShardOutput:
    """Fit ``items`` (manifest rows; refinement phases also need an ``init`` column naming each item's weights
    file) as one stream through ``fit.batch_size`` slots, reusing finished groups from ``workdir``.

    A stop request (signal, deadline) saves the in-flight state and raises ``FitInterrupted``.
    """
    if phase not in layout.PHASES:
        raise IzooError(f"unknown phase {phase!r}", None, f"use one of {', '.join(layout.PHASES)}")
    missing = [c for c in manifest.COLUMNS if c not in items.columns]
    if missing:
        raise IzooError(f"item table lacks manifest columns {missing}", None, "pass rows of results/{ds}/manifest.csv")
    if phase != "basic" and "init" not in items.columns:
        raise IzooError(f"phase {phase} needs each item's init weights file", None, "fit refinement jobs from a plan")
    items = items.reset_index(drop=True)
    dataset_cfg = dataset_config(dataset_cfg)
    fit_cfg = dataset_cfg.fit.to_dict()
    family = get_family(dataset_cfg.model.family)(dataset_cfg.model.to_dict(), fit_cfg)
    if getattr(family, "learned_init", None) is not None:
        family.learned_init.check_dataset(dataset)
    settings = phase_settings(dataset_cfg.fit, phase)
    seed_mode, seed_base = dataset_cfg.seed.mode, dataset_cfg.seed.value
    recipe = dataset_cfg.recipe or ""   # recorded in the weight files (izoo.recipes)
    device = torch.device(device) if device is not None else default_device(fit_cfg)
    batch_size = dataset_cfg.fit.batch_size
    names = list(family.param_shapes())
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    should_stop = stop.should_stop if stop is not None else (lambda: False)

    fp = fingerprint(dataset_cfg, phase, items)
    meter = ProgressMeter(len(items))
    ckpt = BatchCheckpoint(workdir / JOB_CHECKPOINT, fingerprint=fp, should_stop=should_stop,
                           warn=lambda m: emit(f"warning: {m}"), note=lambda m: emit(f"job {m}"))
    groups = _reusable_groups(workdir, ckpt, fp, items, family.param_shapes())
    # groups hold about batch_size items each (more groups when checkpoints cut some short)
    expected = max(math.ceil(len(items) / batch_size), 1)
    for k, inr in enumerate(groups):
        emit(f"group {k + 1}/{max(expected, len(groups))} reused from work dir ({len(inr.items)} items)")
        meter.add(inr.items["psnr"].tolist(), int(inr.items["passed"].sum()), fitted=False)
    done = sum(len(g.items) for g in groups)
    if groups:
        emit(f"{len(groups)} finished group(s) of {done} items reused from work dir")
    if done < len(items):
        if ckpt.load() is not None:
            emit(f"{len(items) - done} items in flight or not started")
        if should_stop():
            raise FitInterrupted("stop requested before fitting")
        samples = [load_sample(row) for row in items.to_dict("records")]
        seeds = item_seeds(seed_mode, seed_base, items["index"].tolist())
        prev_iters = np.zeros(len(items), dtype=np.int64)
        prev_secs = np.zeros(len(items), dtype=np.float64)
        init = None
        if phase != "basic":
            init, prev_iters, prev_secs = _load_init(items, names)
        attrs = _file_attrs(family, fit_cfg, settings, dataset, phase, seed_mode, device, items, recipe)
        attrs["work_fingerprint"] = fp

        def write_group(part: FitResult) -> None:
            k = int(ckpt.meta.get("groups", 0))
            pos = part.positions
            rows = items.iloc[pos].reset_index(drop=True)
            table = pd.DataFrame({
                "index": rows["index"].astype(np.int64), "item_id": rows["item_id"].astype(str),
                "source_id": rows["source_id"].astype(str), "split": rows["split"].astype(str),
                "label": rows["label"].astype(np.int64), "psnr": part.psnr, "phase": phase,
                "iterations": prev_iters[pos] + part.iterations, "seconds": prev_secs[pos] + part.seconds,
                "passed": part.passed})
            extras = {**family.extras([samples[i] for i in pos]),
                      f"{PHASE_REPORT}psnr_before": part.psnr_before.astype(np.float32),
                      f"{PHASE_REPORT}iterations": part.iterations.astype(np.int64),
                      f"{PHASE_REPORT}seconds": part.seconds.astype(np.float64)}
            path = workdir / f"group-{k:05d}.h5"
            layout.write_inr_file(path, part.params, table, {**attrs, "group": k}, extras, compress=False)
            ckpt.meta["groups"] = k + 1
            groups.append(layout.read_inr_file(path))
            unannounced.append((f"group {k + 1}/{max(expected, k + 1)} fitted ({len(pos)} items)", part))

        def announce() -> None:
            # a group counts as fitted once a saved checkpoint counts it: a kill before that refits its items
            while unannounced:
                line, part = unannounced.pop(0)
                emit(line)
                meter.add(part.psnr.tolist(), int(part.passed.sum()), fitted=True)

        unannounced: list[tuple[str, FitResult]] = []
        ckpt.after_save = announce

        ckpt.meta.setdefault("groups", len(groups))
        meter.batch_label = f"job of {len(items)} items"
        try:
            family.fit_batch(samples, init, seeds, settings, device, ckpt, meter.step, slots=batch_size,
                             on_group=write_group)
        except FitInterrupted:
            emit(f"job interrupted ({stop.reason if stop else 'stop requested'}); "
                 f"{ckpt.meta.get('groups', 0)} finished group(s) kept, in-job checkpoint saved to {ckpt.path}")
            raise
        announce()
        ckpt.clear()
        emit(f"job fitted ({len(items)} items in {len(groups)} group(s))")
    return _assemble(items, groups, family, fit_cfg, settings, dataset, phase, seed_mode, device, recipe)


def _reusable_groups(workdir: Path, ckpt: BatchCheckpoint, fp: str, items: pd.DataFrame,
                     shapes: Mapping[str, tuple]) -> list[layout.InrFile]:
    """Finished groups of this job that can be reused; deletes the ones that cannot.

    With a checkpoint, its first ``meta.groups`` group files belong to it (later ones were written after it and
    will be written again). Without, the group files are reused only if they hold every item of the job (a job
    that finished but whose output was lost); a partial set is refitted from scratch.
    """
    files = sorted(workdir.glob("group-*.h5"))
    state = ckpt.load()
    keep = int(ckpt.meta.get("groups", 0)) if state is not None else len(files)
    groups: list[layout.InrFile] = []
    for k, path in enumerate(files):
        if k >= keep:
            path.unlink(missing_ok=True)
            continue
        inr, why = _verify_group(path, fp, items, shapes)
        if inr is None:
            emit(f"warning: finished group {path} cannot be reused ({why}); refitting the job")
            for f in files:
                f.unlink(missing_ok=True)
            ckpt.clear()
            ckpt.meta = {}
            return []
        groups.append(inr)
    if state is None and groups and sum(len(g.items) for g in groups) != len(items):
        emit(f"warning: {len(groups)} group file(s) in {workdir} but no in-job checkpoint; refitting the job")
        for f in files:
            f.unlink(missing_ok=True)
        return []
    return groups


def _file_attrs(family: Any, fit_cfg: Mapping[str, Any], settings: Any, dataset: str, phase: str, seed_mode: str,
                device: torch.device, items: pd.DataFrame, recipe: str) -> dict[str, Any]:
    splits = sorted(set(items["split"].astype(str))) if len(items) else []
    tf32 = bool(fit_cfg["tf32"]) and torch.device(device).type == "cuda"
    return layout.base_attrs(family.name, family.architecture(), **family.file_attrs(),
                             fitting={**dict(fit_cfg), "phase_settings": settings.to_dict()},
                             gate_psnr=float(settings.gate_psnr), seed_mode=seed_mode, device=str(device),
                             tf32=tf32, dataset=dataset, phase=phase, recipe=recipe,
                             split=splits[0] if len(splits) == 1 else ("mixed" if splits else ""))


def _assemble(items: pd.DataFrame, batch_files: list[layout.InrFile], family: Any, fit_cfg: Mapping[str, Any],
              settings: Any, dataset: str, phase: str, seed_mode: str, device: torch.device,
              recipe: str) -> ShardOutput:
    """Concatenate the group files into the job's weights + report (in the job's item order)."""
    shapes = family.param_shapes()
    if batch_files:
        # groups hold items in the order they finished: back to the job's (manifest) order
        where = {int(i): k for k, i in enumerate(pd.concat([b.items["index"] for b in batch_files]))}
        order = np.array([where[int(i)] for i in items["index"]], dtype=np.int64)
        params = {name: np.concatenate([b.params[name] for b in batch_files])[order] for name in shapes}
        table = pd.concat([b.items for b in batch_files], ignore_index=True).iloc[order].reset_index(drop=True)
        extra_names = sorted(set().union(*[set(b.extras) for b in batch_files]))
        extras = {name: np.concatenate([b.extras[name] for b in batch_files])[order] for name in extra_names}
        before = extras.pop(f"{PHASE_REPORT}psnr_before").astype(np.float64)
        iters = extras.pop(f"{PHASE_REPORT}iterations").astype(np.int64)
        secs = extras.pop(f"{PHASE_REPORT}seconds").astype(np.float64)
    else:
        params = {name: np.zeros((0, *shape), dtype=np.float32) for name, shape in shapes.items()}
        table = pd.DataFrame({c: pd.Series(dtype=object if t is str else t) for c, t in layout.ITEM_COLUMNS.items()})
        extras = {}
        before = np.zeros(0)
        iters = np.zeros(0, dtype=np.int64)
        secs = np.zeros(0)
    report = pd.DataFrame({
        "index": items["index"].astype(np.int64).to_numpy(), "item_id": items["item_id"].astype(str).to_numpy(),
        "split": items["split"].astype(str).to_numpy(), "label": items["label"].astype(np.int64).to_numpy(),
        "shard": items["shard"].astype(str).to_numpy(), "phase": phase, "psnr_before": before,
        "psnr_after": table["psnr"].to_numpy(dtype=np.float64), "iterations": iters, "seconds": secs,
        "passed": table["passed"].to_numpy(dtype=bool)})
    attrs = _file_attrs(family, fit_cfg, settings, dataset, phase, seed_mode, device, items, recipe)
    shared = getattr(family, "learned_init", None)
    return ShardOutput(params=params, items=table, extras=extras, attrs=attrs, report=report,
                       shared_init=shared.params if shared is not None else None)
