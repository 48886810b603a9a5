"""Fit a shard (or a refinement job) in batches, resumable from its work directory and safe under SLURM signals.

Work directory layout (never declared to Snakemake):

* ``batch-00000.h5`` … one INR file per finished batch (``izoo.archive.layout``), written atomically, carrying
  a ``work_fingerprint`` attribute (model, seed, fit settings, phase, item indices and init files) and the
  batch's phase report as extras ``phase_report.{psnr_before,iterations,seconds}`` (datasets, not attributes:
  HDF5 attributes are limited to 64 KiB); they are left out of the job's weights file;
* ``batch-00000.ckpt`` the in-flight batch's state every ``checkpoint_every`` steps and on a stop request.

A restarted job reuses a batch file only after it reads back with the right fingerprint, items and finite
weights; anything else is refitted with a warning. Fitting is deterministic (full batch over all pixels, fixed
seeds), so a resumed job produces the same weights as an uninterrupted one.
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
from izoo.errors import IzooError
from izoo.fitting import engine
from izoo.fitting.families import BatchCheckpoint, default_device, finite_params, get_family
from izoo.fitting.phases import PHASES, fit_config, phase_settings
from izoo.fitting.progress import ProgressMeter, emit
from izoo.models import siren

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: the job saved its progress and should be resubmitted
REPORT_COLUMNS = ["index", "item_id", "split", "label", "shard", "phase", "psnr_before", "psnr_after",
                  "iterations", "seconds", "passed"]
MANIFEST_COLUMNS = ["index", "split", "item_id", "label", "source_id", "shard"]
PHASE_REPORT = "phase_report."   # prefix of the per-batch report extras (work dir only)


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

    def write(self, weights_path: str | Path, report_path: str | Path) -> None:
        """Write the report CSV, then the weights file, each atomically: the weights file (the job's product)
        exists only once its report does, so a job killed between the two never looks finished."""
        write_report(self.report, report_path)
        layout.write_inr_file(weights_path, self.params, self.items, self.attrs, self.extras)


def write_report(report: pd.DataFrame, path: str | Path) -> Path:
    """Write a PSNR report CSV atomically."""
    from izoo.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        report[REPORT_COLUMNS].to_csv(tmp, index=False)
    return path


def fingerprint(dataset_cfg: Mapping[str, Any], phase: str, items: pd.DataFrame) -> str:
    """Hash of what determines a batch's weights (settings that only change speed are left out)."""
    fit = {k: v for k, v in fit_config(dataset_cfg.get("fit")).items()
           if k not in ("device", "tf32", "compile", "checkpoint_every", "batch_size")}
    payload = {"model": dataset_cfg.get("model", {}), "seed": dataset_cfg.get("seed", {}), "fit": fit,
               "phase": phase, "index": [int(i) for i in items["index"]],
               "init": [str(p) for p in items["init"]] if "init" in items else []}
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


def _verify_batch(path: Path, fp: str, batch: pd.DataFrame, shapes: Mapping[str, tuple]) -> tuple[layout.InrFile | None, str]:
    """The batch file if it can be reused, else ``None`` and why."""
    try:
        inr = layout.read_inr_file(path)
    except IzooError as exc:
        return None, exc.what
    if inr.attrs.get("work_fingerprint") != fp:
        return None, "it was made with other settings or items"
    if inr.items["index"].tolist() != [int(i) for i in batch["index"]]:
        return None, "its items differ from the batch"
    if inr.items["item_id"].astype(str).tolist() != batch["item_id"].astype(str).tolist():
        return None, "its item ids differ from the manifest's (the manifest was rebuilt)"
    for name, shape in shapes.items():
        if name not in inr.params or tuple(inr.params[name].shape) != (len(batch), *shape):
            return None, f"params/{name} is missing or has the wrong shape"
    if not finite_params(inr.params):
        return None, "it holds non-finite weights"
    if any(f"{PHASE_REPORT}{k}" not in inr.extras for k in ("psnr_before", "iterations", "seconds")):
        return None, "its phase report is missing"
    return inr, ""


def fit_shard(items: pd.DataFrame, load_sample: Callable[[Mapping[str, Any]], Any], dataset_cfg: Mapping[str, Any],
              workdir: str | Path, phase: str, *, dataset: str = "", stop: StopControl | None = None,
              device: torch.device | str | None = None) -> ShardOutput:
    """Fit ``items`` (manifest rows; refinement phases also need an ``init`` column naming each item's weights
    file) in batches of ``fit.batch_size``, reusing finished batches from ``workdir``.

    A stop request (signal, deadline) saves the in-flight batch and raises ``engine.FitInterrupted``.
    """
    if phase not in PHASES:
        raise IzooError(f"unknown phase {phase!r}", None, f"use one of {', '.join(PHASES)}")
    missing = [c for c in MANIFEST_COLUMNS if c not in items.columns]
    if missing:
        raise IzooError(f"item table lacks manifest columns {missing}", None, "pass rows of results/{ds}/manifest.csv")
    if phase != "basic" and "init" not in items.columns:
        raise IzooError(f"phase {phase} needs each item's init weights file", None, "fit refinement jobs from a plan")
    items = items.reset_index(drop=True)
    fit_cfg = fit_config(dataset_cfg.get("fit"))
    model_cfg = dict(dataset_cfg.get("model") or {"family": "siren"})
    family = get_family(str(model_cfg.get("family", "siren")))(model_cfg, fit_cfg)
    settings = phase_settings(fit_cfg, phase)
    seed_cfg = dict(dataset_cfg.get("seed") or {})
    seed_mode, seed_base = str(seed_cfg.get("mode", "shared")), int(seed_cfg.get("value", 42))
    device = torch.device(device) if device is not None else default_device(fit_cfg)
    batch_size = max(int(fit_cfg["batch_size"]), 1)
    names = list(family.param_shapes())
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    should_stop = stop.should_stop if stop is not None else (lambda: False)

    n_batches = max(math.ceil(len(items) / batch_size), 0)
    meter = ProgressMeter(len(items))
    batch_files: list[layout.InrFile] = []
    for k in range(n_batches):
        batch = items.iloc[k * batch_size:(k + 1) * batch_size].reset_index(drop=True)
        label = f"batch {k + 1}/{n_batches}"
        first, last = k * batch_size, k * batch_size + len(batch) - 1
        fp = fingerprint(dataset_cfg, phase, batch)
        path = workdir / f"batch-{k:05d}.h5"
        if path.exists():
            inr, why = _verify_batch(path, fp, batch, family.param_shapes())
            if inr is not None:
                emit(f"{label} reused from work dir")
                batch_files.append(inr)
                meter.add(inr.items["psnr"].tolist(), int(inr.items["passed"].sum()), fitted=False)
                continue
            emit(f"warning: {label} file {path} cannot be reused ({why}); refitting it")
            path.unlink(missing_ok=True)
        if should_stop():
            raise engine.FitInterrupted(f"stop requested before {label}")
        meter.batch_label = label
        samples = [load_sample(row) for row in batch.to_dict("records")]
        seeds = siren.item_seeds(seed_mode, seed_base, batch["index"].tolist())
        prev_iters = np.zeros(len(batch), dtype=np.int64)
        prev_secs = np.zeros(len(batch), dtype=np.float64)
        init = None
        if phase != "basic":
            init, prev_iters, prev_secs = _load_init(batch, names)
        ckpt = BatchCheckpoint(workdir / f"batch-{k:05d}.ckpt", fingerprint=fp, should_stop=should_stop,
                               warn=lambda m: emit(f"warning: {m}"), note=lambda m: emit(f"{label} {m}"))
        try:
            res = family.fit_batch(samples, init, seeds, settings, device, ckpt, meter.step)
        except engine.FitInterrupted:
            emit(f"{label} interrupted ({stop.reason if stop else 'stop requested'}); "
                 f"in-batch checkpoint saved to {ckpt.path}")
            raise
        table = pd.DataFrame({
            "index": batch["index"].astype(np.int64), "item_id": batch["item_id"].astype(str),
            "source_id": batch["source_id"].astype(str), "split": batch["split"].astype(str),
            "label": batch["label"].astype(np.int64), "psnr": res.psnr, "phase": phase,
            "iterations": prev_iters + res.iterations, "seconds": prev_secs + res.seconds, "passed": res.passed})
        attrs = _file_attrs(family, fit_cfg, settings, dataset, phase, seed_mode, device, batch)
        attrs["work_fingerprint"] = fp
        extras = {**family.extras(samples), f"{PHASE_REPORT}psnr_before": res.psnr_before.astype(np.float32),
                  f"{PHASE_REPORT}iterations": res.iterations.astype(np.int64),
                  f"{PHASE_REPORT}seconds": res.seconds.astype(np.float64)}
        layout.write_inr_file(path, res.params, table, attrs, extras)
        ckpt.clear()
        emit(f"{label} fitted (items {first}-{last})")
        batch_files.append(layout.read_inr_file(path))
        meter.add(res.psnr.tolist(), int(res.passed.sum()), fitted=True)

    return _assemble(items, batch_files, family, fit_cfg, settings, dataset, phase, seed_mode, device)


def _file_attrs(family: Any, fit_cfg: Mapping[str, Any], settings: Any, dataset: str, phase: str, seed_mode: str,
                device: torch.device, items: pd.DataFrame) -> dict[str, Any]:
    splits = sorted(set(items["split"].astype(str))) if len(items) else []
    tf32 = bool(fit_cfg.get("tf32", True)) and torch.device(device).type == "cuda"
    return layout.base_attrs(family.name, family.architecture(), **family.file_attrs(),
                             fitting={**dict(fit_cfg), "phase_settings": settings.to_dict()},
                             gate_psnr=float(settings.gate_psnr), seed_mode=seed_mode, device=str(device),
                             tf32=tf32, dataset=dataset, phase=phase,
                             split=splits[0] if len(splits) == 1 else ("mixed" if splits else ""))


def _assemble(items: pd.DataFrame, batch_files: list[layout.InrFile], family: Any, fit_cfg: Mapping[str, Any],
              settings: Any, dataset: str, phase: str, seed_mode: str, device: torch.device) -> ShardOutput:
    """Concatenate the batch files into the job's weights + report."""
    shapes = family.param_shapes()
    if batch_files:
        params = {name: np.concatenate([b.params[name] for b in batch_files]) for name in shapes}
        table = pd.concat([b.items for b in batch_files], ignore_index=True)
        extra_names = sorted(set().union(*[set(b.extras) for b in batch_files]))
        extras = {name: np.concatenate([b.extras[name] for b in batch_files]) for name in extra_names}
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
    attrs = _file_attrs(family, fit_cfg, settings, dataset, phase, seed_mode, device, items)
    return ShardOutput(params=params, items=table, extras=extras, attrs=attrs, report=report)
