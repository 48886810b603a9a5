"""Registry of model families, so the same shard machinery fits SIRENs (2D) and NeRFs (3D).

A family is a class registered under a name (``register_family(name, cls)``) and built per dataset as
``cls(model_cfg, fit_cfg)`` (the dataset config's ``model:`` and ``fit:`` sections). It must provide:

==============================================  ============================================================
member                                          meaning
==============================================  ============================================================
``name: str``                                   family name stored as the file attribute ``model_family``
``param_shapes() -> dict[str, tuple]``          per-item shape of every parameter tensor, in file order
                                                (SIREN: ``layer{i}.weight`` ``(out, in)``, ``layer{i}.bias`` ``(out,)``)
``architecture() -> dict``                      model config for the file attribute ``architecture``
                                                (must include ``layer_shapes``)
``file_attrs() -> dict``                        further attributes (``normalisation``, ``coordinate_convention``)
``init(seeds) -> dict[str, ndarray]``           initial parameters ``[n, *shape]`` for per-item seeds
``fit_batch(samples, init_params, seeds,        fit the samples in one phase, ``slots`` at a time (continuous
  settings, device, checkpoint, progress,       batching, ``izoo.fitting.stream``); ``init_params`` is ``None``
  slots, on_group) -> BatchFit | None``         (start from ``init(seeds)``) or a dict like ``init``'s;
                                                ``settings`` is a ``PhaseSettings``; ``checkpoint`` a
                                                ``BatchCheckpoint`` (resume state, periodic saves, stop requests →
                                                save + ``FitInterrupted``); ``progress(finished, total, n_active,
                                                mean_psnr)`` or ``None``; with ``on_group`` finished items are
                                                handed out in groups (``BatchFit`` with ``positions``) and ``None``
                                                is returned, else one ``BatchFit`` of all samples
``extras(samples) -> dict[str, ndarray]``       per-item arrays stored under ``/extras`` (e.g. ``label_map``)
==============================================  ============================================================

``get_family("nerf")`` imports ``izoo.nerf`` first, which registers the NeRF family.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from izoo.atomic import atomic_path
from izoo.devices import resolve_device
from izoo.errors import IzooError
from izoo.fitting import engine, learned_init
from izoo.fitting.phases import PhaseSettings, fit_config
from izoo.fitting.progress import emit
from izoo.models import siren

log = logging.getLogger(__name__)

_FAMILIES: dict[str, type] = {}
#: families that live in their own package and register themselves on import
_LAZY = {"nerf": "izoo.nerf"}


def register_family(name: str, cls: type) -> type:
    """Register a model family class under ``name`` (usable as a decorator argument's result)."""
    _FAMILIES[name] = cls
    return cls


def get_family(name: str) -> type:
    """The family class registered as ``name`` (imports ``izoo.nerf`` for ``nerf``)."""
    if name not in _FAMILIES and name in _LAZY:
        importlib.import_module(_LAZY[name])
    if name not in _FAMILIES:
        raise IzooError(f"unknown model family {name!r}", "config.yaml",
                        f"set model.family to one of {', '.join(sorted(set(_FAMILIES) | set(_LAZY)))}")
    return _FAMILIES[name]


@dataclass
class BatchFit:
    """Per-item outcome of ``fit_batch`` (arrays in ``positions`` order: positions in the sample list)."""

    params: dict[str, np.ndarray]
    psnr_before: np.ndarray
    psnr: np.ndarray
    iterations: np.ndarray
    seconds: np.ndarray
    passed: np.ndarray
    positions: np.ndarray | None = None

    def __len__(self) -> int:
        return int(len(self.psnr))


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


class SirenFamily:
    """SIREN images: ``model: {family: siren, depth, width, w0, init}``."""

    name = "siren"

    def __init__(self, model_cfg: Mapping[str, Any], fit_cfg: Mapping[str, Any] | None = None):
        cfg = dict(model_cfg)
        init = str(cfg.get("init", "siren"))
        try:
            # a learned init was meta-learned from the SIREN init; items start from the init file instead
            self.spec = siren.SirenSpec(depth=int(cfg.get("depth", 3)), width=int(cfg.get("width", 64)),
                                        w0=float(cfg.get("w0", 30.0)),
                                        init="siren" if init == learned_init.LEARNED else init)
        except ValueError as exc:
            raise IzooError(f"bad model config: {exc}", "config.yaml", "fix the dataset's model: section") from exc
        self.fit_cfg = fit_config(fit_cfg)
        self.learned_init: learned_init.LearnedInit | None = None
        init_file = learned_init.init_file_of(cfg)
        if init_file is not None:
            self.learned_init = learned_init.read_init_file(init_file, self.param_names())
            self.learned_init.check_architecture(self.architecture())

    # ----- description
    def param_names(self) -> list[str]:
        """``layer{i}.weight``, ``layer{i}.bias`` for every layer."""
        return [f"layer{i}.{kind}" for i in range(self.spec.depth) for kind in ("weight", "bias")]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-item shape of every parameter tensor, in file order."""
        return dict(zip(self.param_names(), self.spec.param_shapes()))

    def architecture(self) -> dict[str, Any]:
        """Spec plus the exact layer shapes (SPEC §1: record them in the archive)."""
        return {**self.spec.to_dict(), "family": "siren", "n_params": self.spec.n_params(),
                "layer_shapes": {k: list(v) for k, v in self.param_shapes().items()}}

    def file_attrs(self) -> dict[str, Any]:
        """Normalisation and coordinate convention of the fitted images."""
        return {"normalisation": {"mean": list(siren.IMAGENET_MEAN), "std": list(siren.IMAGENET_STD),
                                  "psnr": "PSNR on de-normalised [0,1] pixels (prediction clamped to [0, 1])"},
                "coordinate_convention": siren.COORDINATE_CONVENTION,
                **({"learned_init": self.learned_init.summary()} if self.learned_init is not None else {})}

    def init(self, seeds: Sequence[int]) -> dict[str, np.ndarray]:
        """SIREN initialisation of every item from its seed, or the learned init for every item."""
        if self.learned_init is not None:
            return self.learned_init.broadcast(len(seeds))
        params = siren.init_params(self.spec, seeds)
        return {k: p.numpy() for k, p in zip(self.param_names(), params)}

    def extras(self, samples: Sequence[Any]) -> dict[str, np.ndarray]:
        """Per-item arrays stored under ``/extras``: ``label_map`` and any ``Sample.extras`` (e.g. ``label_map_coarse``)."""
        per_item = []
        for s in samples:
            arrays = dict(getattr(s, "extras", None) or {})
            if getattr(s, "label_map", None) is not None:
                arrays["label_map"] = s.label_map
            per_item.append(arrays)
        names = set().union(*per_item) if per_item else set()
        out: dict[str, np.ndarray] = {}
        for name in sorted(names):
            if any(name not in arrays for arrays in per_item):
                raise IzooError(f"some items of a batch have extra {name!r} and others do not", None,
                                "check the dataset reader: every item of a dataset needs the same extras")
            values = [np.asarray(a[name].numpy() if isinstance(a[name], torch.Tensor) else a[name]) for a in per_item]
            if len({v.shape for v in values}) > 1:
                raise IzooError(f"extra {name!r} differs in size within one batch", None,
                                "resize label maps to one size per dataset")
            out[name] = np.stack(values).astype(np.uint8) if name.startswith("label_map") else np.stack(values)
        return out

    # ----- fitting
    def fit_batch(self, samples: Sequence[Any], init_params: Mapping[str, np.ndarray] | None, seeds: Sequence[int],
                  settings: PhaseSettings, device: torch.device | str, checkpoint: BatchCheckpoint | None = None,
                  progress: engine.ProgressFn | None = None, slots: int | None = None,
                  on_group: Callable[[BatchFit], None] | None = None) -> BatchFit | None:
        """Fit the samples' images, one stream per image size, ``slots`` at a time; resumable."""
        images = [self._image(s) for s in samples]
        init = init_params if init_params is not None else self.init(seeds)
        names = self.param_names()
        flat_init = [torch.from_numpy(np.asarray(init[k], dtype=np.float32)) for k in names]
        use_compile = self.fit_cfg.get("compile", "auto")

        def make_fitter(positions: list[int]) -> engine.SirenBatchFit:
            sel = torch.as_tensor(positions)
            return engine.SirenBatchFit(self.spec, torch.stack([images[i] for i in positions]), settings,
                                        [p[sel] for p in flat_init], device=device, use_compile=use_compile,
                                        slots=slots)

        return fit_in_streams(same_size_units([tuple(im.shape) for im in images]), make_fitter, names,
                              lambda params: [p.numpy() for p in params], settings, checkpoint, progress, on_group)

    def _image(self, sample: Any) -> torch.Tensor:
        image = getattr(sample, "image", None)
        if image is None:
            raise IzooError(f"item {getattr(sample, 'item_id', '?')} has no image", None,
                            "SIREN datasets need 2D images; use family nerf for scenes")
        image = torch.as_tensor(image, dtype=torch.float32)
        if image.dim() != 3 or image.shape[0] != self.spec.out_features:
            raise IzooError(f"item {getattr(sample, 'item_id', '?')} image has shape {tuple(image.shape)}, "
                            f"expected [{self.spec.out_features}, H, W]", None, "check the dataset reader")
        return image


register_family("siren", SirenFamily)


def same_size_units(shapes: Sequence[tuple[int, ...]]) -> list[list[int]]:
    """Positions grouped by item size, in order of first appearance (items of one size share a stream)."""
    units: dict[tuple[int, ...], list[int]] = {}
    for pos, shape in enumerate(shapes):
        units.setdefault(tuple(shape), []).append(pos)
    return list(units.values())


def _batch_fit(res: engine.FitResult, names: Sequence[str], as_arrays: Callable[[Any], list[np.ndarray]],
               positions: Sequence[int]) -> BatchFit:
    """A stream's result with parameters by name and positions in the caller's sample list."""
    local = res.positions if res.positions is not None else np.arange(len(res))
    return BatchFit(params={k: np.asarray(v, dtype=np.float32) for k, v in zip(names, as_arrays(res.params))},
                    psnr_before=res.psnr_before, psnr=res.psnr, iterations=res.iterations, seconds=res.seconds,
                    passed=res.passed, positions=np.asarray(positions, dtype=np.int64)[local])


def concat_batch_fits(parts: Sequence[BatchFit], names: Sequence[str]) -> BatchFit:
    """One ``BatchFit`` of several, sorted by position."""
    positions = np.concatenate([p.positions for p in parts])
    order = np.argsort(positions, kind="stable")
    cat = lambda field: np.concatenate([getattr(p, field) for p in parts])[order]  # noqa: E731
    return BatchFit(params={k: np.concatenate([p.params[k] for p in parts])[order] for k in names},
                    psnr_before=cat("psnr_before"), psnr=cat("psnr"), iterations=cat("iterations"),
                    seconds=cat("seconds"), passed=cat("passed"), positions=positions[order])


def _fits_to_tensors(parts: Sequence[BatchFit], names: Sequence[str]) -> dict[str, torch.Tensor] | None:
    """Finished items kept in memory, in the plain-tensor form a ``weights_only`` checkpoint accepts."""
    if not parts:
        return None
    whole = concat_batch_fits(parts, names)
    out = {f: torch.from_numpy(np.ascontiguousarray(getattr(whole, f)))
           for f in ("psnr_before", "psnr", "iterations", "seconds", "passed", "positions")}
    out.update({f"param:{k}": torch.from_numpy(np.ascontiguousarray(whole.params[k])) for k in names})
    return out


def _fits_from_tensors(saved: Mapping[str, torch.Tensor] | None, names: Sequence[str]) -> list[BatchFit]:
    if not saved:
        return []
    get = lambda f: saved[f].numpy()  # noqa: E731
    return [BatchFit(params={k: saved[f"param:{k}"].numpy() for k in names}, psnr_before=get("psnr_before"),
                     psnr=get("psnr"), iterations=get("iterations"), seconds=get("seconds"), passed=get("passed"),
                     positions=get("positions"))]


def fit_in_streams(units: Sequence[Sequence[int]], make_fitter: Callable[[list[int]], Any], names: Sequence[str],
                   as_arrays: Callable[[Any], list[np.ndarray]], settings: PhaseSettings,
                   checkpoint: BatchCheckpoint | None, progress: engine.ProgressFn | None,
                   on_group: Callable[[BatchFit], None] | None) -> BatchFit | None:
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

        def hand_out(res: engine.FitResult, _pos: list[int] = positions) -> None:
            part = _batch_fit(res, names, as_arrays, _pos)
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
        return BatchFit(params=empty, psnr_before=np.zeros(0, np.float32), psnr=np.zeros(0, np.float32),
                        iterations=np.zeros(0, np.int64), seconds=np.zeros(0, np.float32),
                        passed=np.zeros(0, bool), positions=np.zeros(0, np.int64))
    return concat_batch_fits(collected, names)


def default_device(fit_cfg: Mapping[str, Any] | None) -> torch.device:
    """The device a ``fit:`` section asks for (``IZOO_DEVICE`` in the environment overrides it)."""
    cfg = fit_config(fit_cfg)
    return resolve_device(os.environ.get("IZOO_DEVICE") or str(cfg.get("device", "auto")),
                          tf32=bool(cfg.get("tf32", True)), setting="fit.device", source="config.yaml")


def finite_params(params: Mapping[str, np.ndarray]) -> bool:
    """All parameter values are finite (a check applied to batch files before reusing them)."""
    return all(bool(np.isfinite(v).all()) for v in params.values())
