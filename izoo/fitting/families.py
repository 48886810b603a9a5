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
``fit_batch(samples, init_params, seeds,        fit one batch in one phase; ``init_params`` is ``None`` (start
  settings, device, checkpoint, progress)       from ``init(seeds)``) or a dict like ``init``'s; ``settings`` is a
  -> BatchFit``                                 ``PhaseSettings``; ``checkpoint`` a ``BatchCheckpoint`` (resume
                                                state, periodic saves, stop requests → save + ``FitInterrupted``);
                                                ``progress(step, max_steps, n_active, mean_psnr)`` or ``None``
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
from izoo.errors import IzooError
from izoo.fitting import engine
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
    """Per-item outcome of ``fit_batch`` (arrays in sample order)."""

    params: dict[str, np.ndarray]
    psnr_before: np.ndarray
    psnr: np.ndarray
    iterations: np.ndarray
    seconds: np.ndarray
    passed: np.ndarray

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
        self._note = note or log.info

    def should_stop(self) -> bool:
        """Whether a signal or deadline asked the job to stop."""
        return bool(self._should_stop and self._should_stop())

    def load(self) -> dict[str, Any] | None:
        """The saved state of this batch, or ``None``."""
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
        self._note(f"resumed from its in-batch checkpoint {self.path}")
        return state["state"]

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically (a kill mid-write leaves the previous checkpoint)."""
        if self.path is None:
            return
        # serialised in memory first: torch.save's own error on a full disk does not say ENOSPC, a plain
        # file write's OSError does, so atomic_path turns it into the one-line disk-full error
        buffer = io.BytesIO()
        torch.save({"fingerprint": self.fingerprint, "state": state}, buffer)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())

    def clear(self) -> None:
        """Delete the checkpoint once the batch file is written."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class SirenFamily:
    """SIREN images: ``model: {family: siren, depth, width, w0, init}``."""

    name = "siren"

    def __init__(self, model_cfg: Mapping[str, Any], fit_cfg: Mapping[str, Any] | None = None):
        cfg = dict(model_cfg)
        try:
            self.spec = siren.SirenSpec(depth=int(cfg.get("depth", 3)), width=int(cfg.get("width", 64)),
                                        w0=float(cfg.get("w0", 30.0)), init=str(cfg.get("init", "siren")))
        except ValueError as exc:
            raise IzooError(f"bad model config: {exc}", "config.yaml", "fix the dataset's model: section") from exc
        self.fit_cfg = fit_config(fit_cfg)
        self.chunk_size: int | None = None   # items fitted at once after an out-of-memory halving

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
                "coordinate_convention": siren.COORDINATE_CONVENTION}

    def init(self, seeds: Sequence[int]) -> dict[str, np.ndarray]:
        """SIREN initialisation of every item from its seed."""
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
                  progress: engine.ProgressFn | None = None) -> BatchFit:
        """Fit the samples' images in groups of one size, halving the group on out-of-memory; resumable."""
        n = len(samples)
        images = [self._image(s) for s in samples]
        init = init_params if init_params is not None else self.init(seeds)
        flat_init = [np.asarray(init[k], dtype=np.float32) for k in self.param_names()]
        checkpoint = checkpoint or BatchCheckpoint(None)
        saved = checkpoint.load() or {}
        done: dict[str, torch.Tensor] = saved.get("done") or {
            "mask": torch.zeros(n, dtype=torch.bool), "psnr_before": torch.zeros(n), "psnr": torch.zeros(n),
            "iterations": torch.zeros(n, dtype=torch.int64), "seconds": torch.zeros(n, dtype=torch.float64),
            **{f"p{k}": torch.zeros(n, *p.shape[1:]) for k, p in enumerate(flat_init)}}
        if saved.get("chunk_size"):
            self.chunk_size = int(saved["chunk_size"])
        inflight = saved.get("inflight")
        use_compile = self.fit_cfg.get("compile", "auto")

        while not bool(done["mask"].all()):
            positions = self._next_unit(images, done["mask"])
            resume = None
            if inflight is not None and inflight["positions"].tolist() == positions:
                resume = inflight["engine"]
            inflight = None
            sel = torch.as_tensor(positions)

            def save(engine_state: dict[str, Any], _pos: list[int] = positions) -> None:
                checkpoint.save({"chunk_size": self.chunk_size, "done": done,
                                 "inflight": {"positions": torch.as_tensor(_pos), "engine": engine_state}})

            oom = None
            try:
                res = engine.fit_images(torch.stack([images[i] for i in positions]), self.spec, settings,
                                        init=[torch.from_numpy(p[sel.numpy()]) for p in flat_init], device=device,
                                        use_compile=use_compile, resume_state=resume,
                                        should_stop=checkpoint.should_stop,
                                        on_checkpoint=save if checkpoint.path else None, progress=progress)
            except Exception as exc:
                if not engine.is_out_of_memory(exc):
                    raise
                oom = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if oom is not None:  # outside the except block, so the failed attempt's tensors are freed first
                if len(positions) <= 1:
                    raise IzooError(f"one item does not fit in {device} memory ({oom})", None,
                                    "use a device with more memory or a smaller model")
                self.chunk_size = max(1, len(positions) // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                emit(f"warning: out of memory fitting {len(positions)} items at once on {device}; "
                     f"halving the batch to {self.chunk_size} items and going on")
                continue
            done["mask"][sel] = True
            done["psnr_before"][sel] = torch.from_numpy(res.psnr_before)
            done["psnr"][sel] = torch.from_numpy(res.psnr)
            done["iterations"][sel] = torch.from_numpy(res.iterations)
            done["seconds"][sel] = torch.from_numpy(res.seconds).double()
            for k, p in enumerate(res.params):
                done[f"p{k}"][sel] = p.float()
            if not bool(done["mask"].all()) and checkpoint.path is not None:
                checkpoint.save({"chunk_size": self.chunk_size, "done": done, "inflight": None})

        psnr = done["psnr"].numpy().astype(np.float32)
        return BatchFit(params={name: done[f"p{k}"].numpy() for k, name in enumerate(self.param_names())},
                        psnr_before=done["psnr_before"].numpy().astype(np.float32), psnr=psnr,
                        iterations=done["iterations"].numpy().astype(np.int64),
                        seconds=done["seconds"].numpy().astype(np.float32), passed=psnr >= settings.gate_psnr)

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

    def _next_unit(self, images: Sequence[torch.Tensor], done_mask: torch.Tensor) -> list[int]:
        """Positions fitted together next: not yet done, one image size, at most ``chunk_size`` items."""
        todo = [i for i in range(len(images)) if not bool(done_mask[i])]
        size = tuple(images[todo[0]].shape)
        same = [i for i in todo if tuple(images[i].shape) == size]
        limit = self.chunk_size or len(same)
        return same[:limit]


register_family("siren", SirenFamily)


def default_device(fit_cfg: Mapping[str, Any] | None) -> torch.device:
    """The device a ``fit:`` section asks for (``IZOO_DEVICE`` in the environment overrides it)."""
    cfg = fit_config(fit_cfg)
    return engine.resolve_device(os.environ.get("IZOO_DEVICE") or str(cfg.get("device", "auto")),
                                 tf32=bool(cfg.get("tf32", True)))


def finite_params(params: Mapping[str, np.ndarray]) -> bool:
    """All parameter values are finite (a check applied to batch files before reusing them)."""
    return all(bool(np.isfinite(v).all()) for v in params.values())
