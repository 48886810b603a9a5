"""Learned shared initialisation files (``model.init: learned``): format, content hash and the checks on use.

An init file (written by ``izoo meta-init``, ``izoo.fitting.meta_init``) is a small HDF5 file:

======================  ======================  ===========================================================
path                    shape / dtype           meaning
======================  ======================  ===========================================================
``/shared_init/<name>`` per-item shape float32  the learned init (``layer0.weight`` ``[out, in]``, ...), the
                                                group fitted shard files and archives carry too
``/inner_lr/<name>``    per-item shape float32  Meta-SGD's per-parameter SGD learning rates (format 2): every fit
                                                from the init first takes ``inner_steps`` steps
                                                ``φ ← φ − lr ⊙ ∇L(φ)`` with them (``izoo.siren.warm_start``)
``/meta_items/index``   ``[M]`` int64           manifest indices of the train items it was meta-learned from
======================  ======================  ===========================================================

Attributes: ``format`` = ``izoo-learned-init``, ``format_version``, ``dataset``, ``source`` (the dataset's
``source:`` section), ``model_family``, ``architecture``, ``meta_init`` (settings), ``sha256``, ``seconds``,
``izoo_version``, ``created``, and in format 2 ``inner_steps``, ``inner_lr_sha256`` and ``adam_lr_factor``
(the fits' Adam phase after the learned-lr steps runs at this multiple of ``fit.lr``, calibrated by
``izoo meta-init``). A format-1 file (no ``/inner_lr``) is a plain init: fits start their Adam phase from it.

``sha256`` hashes the weights (float32 bytes in file order, with their names and shapes), not the file
bytes, so the same init written twice has the same hash; ``inner_lr_sha256`` hashes the learning rates the
same way. Both, with ``inner_steps`` and ``adam_lr_factor``, enter the fit fingerprint
(``izoo.fitting.shard.fingerprint``); the weight hash is the ``learned_init`` attribute of every file fitted
from the init, so a changed init refits every batch instead of mixing weights from two inits.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import torch

import izoo
from izoo.archive import layout
from izoo.atomic import atomic_path
from izoo.errors import IzooError
from izoo.siren.warm_start import WarmStart

FORMAT = "izoo-learned-init"
FORMAT_VERSION = 2
INNER_LR = "inner_lr"
#: model.init value that makes every item start from an init file
LEARNED = "learned"
#: architecture keys an init file must agree on with the dataset's model (``init`` names the random init
#: meta-learning started from and is free to differ)
ARCHITECTURE_KEYS = ("family", "depth", "width", "w0", "in_features", "out_features", "layer_shapes")


@dataclass
class LearnedInit:
    """One init file in memory."""

    path: Path
    params: dict[str, np.ndarray]     # per-item shapes, in the family's parameter order
    attrs: dict[str, Any]
    meta_items: np.ndarray            # manifest indices it was meta-learned from
    inner_lrs: dict[str, np.ndarray] | None = None   # Meta-SGD learning rates (per-item shapes), format 2

    @property
    def sha256(self) -> str:
        """Content hash of the weights (recorded in the file when written)."""
        return str(self.attrs["sha256"])

    @property
    def inner_steps(self) -> int:
        """Learned-lr SGD steps every fit from this init takes first (0: a plain init)."""
        return int(self.attrs.get("inner_steps", 0)) if self.inner_lrs is not None else 0

    def warm_start(self) -> WarmStart | None:
        """The fit jobs' first steps from this init (``None`` for a plain init)."""
        if not self.inner_steps:
            return None
        return WarmStart(lrs=[torch.from_numpy(a) for a in self.inner_lrs.values()], steps=self.inner_steps,
                         adam_lr_factor=self.adam_lr_factor)

    @property
    def adam_lr_factor(self) -> float:
        """Multiplier of the Adam phase's learning rates after the learned-lr steps (calibrated; 1 for a plain init)."""
        return float(self.attrs.get("adam_lr_factor", 1.0)) if self.inner_steps else 1.0

    def broadcast(self, n: int) -> dict[str, np.ndarray]:
        """The init repeated for ``n`` items (``[n, *shape]``), as ``SirenFamily.init`` returns it."""
        return {name: np.repeat(value[None], n, axis=0) for name, value in self.params.items()}

    def summary(self) -> dict[str, Any]:
        """The ``learned_init`` attribute of files fitted from this init."""
        return {"sha256": self.sha256, "file": str(self.path), "dataset": self.attrs.get("dataset", ""),
                "meta_init": self.attrs.get("meta_init", {}), "n_meta_items": int(len(self.meta_items)),
                "inner_steps": self.inner_steps, "adam_lr_factor": self.adam_lr_factor}

    def check_architecture(self, architecture: Mapping[str, Any]) -> None:
        """One-line error when the init was learned for another model."""
        mine = self.attrs.get("architecture") or {}
        for key in ARCHITECTURE_KEYS:
            if mine.get(key) != architecture.get(key):
                raise IzooError(f"init file was learned for another model ({key}: {mine.get(key)!r} in the file, "
                                f"{architecture.get(key)!r} in the dataset's model config)", self.path,
                                "rerun `izoo meta-init` for this dataset's model (the workflow's meta_init rule)")

    def check_dataset(self, dataset: str) -> None:
        """One-line error when the init was learned on another dataset."""
        theirs = str(self.attrs.get("dataset", ""))
        if dataset and theirs != dataset:
            raise IzooError(f"init file was learned on dataset {theirs!r}, not {dataset!r}", self.path,
                            f"run `izoo meta-init --dataset {dataset}` and point model.init_file at its output")


def write_init_file(path: str | Path, params: Mapping[str, np.ndarray], meta_items: Sequence[int],
                    attrs: Mapping[str, Any], inner_lrs: Mapping[str, np.ndarray] | None = None,
                    inner_steps: int = 0, adam_lr_factor: float = 1.0) -> Path:
    """Write an init file atomically (with Meta-SGD's ``inner_lrs``, steps and calibrated Adam lr factor when
    given); hashes, format and version attributes are added here."""
    path = Path(path)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "izoo_version": izoo.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **dict(attrs), "sha256": layout.shared_init_sha256(params)}
    if inner_lrs is not None:
        full.update(inner_steps=int(inner_steps), inner_lr_sha256=layout.shared_init_sha256(inner_lrs),
                    adam_lr_factor=float(adam_lr_factor))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            layout.write_shared_init(h5, params)
            for name, value in (inner_lrs or {}).items():
                h5.create_dataset(f"{INNER_LR}/{name}", data=np.asarray(value, dtype=np.float32))
            h5.create_dataset("meta_items/index", data=np.asarray(meta_items, dtype=np.int64))
            h5.attrs.update(layout.encode_attrs(full))
    return path


def read_init_file(path: str | Path, names: Sequence[str]) -> LearnedInit:
    """Read an init file whose parameters are ``names``; a missing, foreign, corrupt or altered file is a one-line error."""
    path = Path(path)
    fix = "rerun `izoo meta-init` (the workflow's meta_init rule) to write it"
    if not path.exists():
        raise IzooError("learned init file is missing", path, fix)
    try:
        with h5py.File(path, "r") as h5:
            attrs = layout.decode_attrs(h5.attrs)
            if attrs.get("format") != FORMAT:
                raise IzooError(f"not an izoo learned init file (format={attrs.get('format')!r})", path, fix)
            stored = layout.read_shared_init(h5) or {}
            lrs = {name: ds[:] for name, ds in h5[INNER_LR].items()} if INNER_LR in h5 else None
            meta_items = h5["meta_items/index"][:]
    except IzooError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise IzooError(f"learned init file is corrupt or truncated ({type(exc).__name__})", path, fix) from exc
    if sorted(stored) != sorted(names):
        raise IzooError(f"init file holds parameters {sorted(stored)}, the model has {sorted(names)}", path,
                        "rerun `izoo meta-init` for this dataset's model (the workflow's meta_init rule)")
    params = {name: stored[name] for name in names}
    if layout.shared_init_sha256(params) != attrs.get("sha256"):
        raise IzooError("learned init file's weights do not match its recorded sha256 (edited or damaged)", path, fix)
    if lrs is not None:
        if sorted(lrs) != sorted(names) or any(lrs[n].shape != params[n].shape for n in names):
            raise IzooError(f"init file's /{INNER_LR} does not match its weights ({sorted(lrs)})", path, fix)
        lrs = {name: lrs[name] for name in names}
        if layout.shared_init_sha256(lrs) != attrs.get("inner_lr_sha256"):
            raise IzooError(f"learned init file's /{INNER_LR} does not match its recorded inner_lr_sha256 "
                            "(edited or damaged)", path, fix)
    return LearnedInit(path=path, params=params, attrs=attrs, meta_items=meta_items, inner_lrs=lrs)


def init_file_of(model_cfg: Mapping[str, Any]) -> Path | None:
    """``model.init_file`` when ``model.init`` is ``learned`` (else ``None``); a learned init without a file is an error."""
    if str(model_cfg.get("init", "")) != LEARNED:
        return None
    path = model_cfg.get("init_file")
    if not path:
        raise IzooError("model.init is 'learned' but model.init_file is not set", "config.yaml",
                        "run `izoo meta-init` and set model.init_file to its --out file (the workflow sets it)")
    return Path(str(path))


_HASHES: dict[tuple[str, int, int], str] = {}


def init_file_sha256(model_cfg: Mapping[str, Any]) -> str | None:
    """What the fits take from the dataset's init file, hashed: its recorded weight hash, plus its learning-rate
    hash, steps and Adam lr factor for a Meta-SGD init (cached per file version); ``None`` without a learned init."""
    path = init_file_of(model_cfg)
    if path is None:
        return None
    if not path.exists():
        raise IzooError("learned init file is missing", path,
                        "rerun `izoo meta-init` (the workflow's meta_init rule) to write it")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _HASHES:
        try:
            with h5py.File(path, "r") as h5:
                attrs = layout.decode_attrs(h5.attrs)
            _HASHES[key] = str(attrs.get("sha256", ""))
            if attrs.get("inner_lr_sha256"):
                _HASHES[key] += (f"+{attrs['inner_lr_sha256']}x{int(attrs.get('inner_steps', 0))}"
                                 f"@{float(attrs.get('adam_lr_factor', 1.0))!r}")
        except OSError as exc:
            raise IzooError(f"learned init file is unreadable ({type(exc).__name__})", path,
                            "rerun `izoo meta-init` to rewrite it") from exc
    return _HASHES[key]
