"""The one HDF5 layout of izoo INR files (shard weight files and merged archives alike).

=====================  ==========================  =====================================================
path                   shape / dtype               meaning
=====================  ==========================  =====================================================
``/params/<name>``     ``[N, ...]`` float32        one dataset per layer tensor (``layer0.weight`` ``[N, out, in]``,
                                                   ``layer0.bias`` ``[N, out]``, ...), stacked over items,
                                                   chunked along items (~256 KB chunks),
                                                   gzip level 1 + shuffle
``/items/index``       ``[N]`` int64               row in the dataset manifest (archive order = manifest order)
``/items/item_id``     ``[N]`` utf-8 str           stable item id
``/items/source_id``   ``[N]`` utf-8 str           where the item came from (file path, ``file#row``)
``/items/split``       ``[N]`` utf-8 str           split name
``/items/label``       ``[N]`` int64               class label (-1 when the dataset has none)
``/items/psnr``        ``[N]`` float32             final PSNR (dB, de-normalised [0, 1] pixels / held-out views)
``/items/phase``       ``[N]`` utf-8 str           last phase that trained the item: basic, extended, until_threshold
``/items/iterations``  ``[N]`` int64               optimisation steps over all phases
``/items/seconds``     ``[N]`` float32             wall-clock seconds spent fitting the item (its share of its batches)
``/items/passed``      ``[N]`` bool                PSNR reached the quality gate
``/extras/<name>``     ``[N, ...]``                per-item extras (segmentation ``label_map``, 3D ``cameras``...)
``/shared_init/<name>`` ``[...]`` float32          only with ``model.init: learned``: the learned init every item
                                                   started from (per-item shapes, no item axis), so a reader can
                                                   compute weight deltas; attribute ``learned_init`` describes it
=====================  ==========================  =====================================================

Root attributes (JSON strings where structured): ``format`` = ``izoo-inr``, ``format_version``,
``model_family`` (``siren``/``nerf``), ``architecture`` (JSON: spec + ``layer_shapes``), ``normalisation``,
``fitting`` (JSON settings), ``gate_psnr``, ``izoo_version``, ``created``, ``coordinate_convention``,
``seed_mode``, ``dataset``, ``split``, ``codec``. Merged archives add ``n_items``, ``phase_counts``,
``fitting_by_phase`` (each phase's settings), ``virtual``, ``merged_from`` and ``virtual_sources`` (input and
mapped files, relative to the archive) and drop the per-file ``shard``/``job``/``phase``/``phase_report``/``work_fingerprint``.
See docs/ARCHIVE.md for the full table.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import pandas as pd

import izoo
from izoo.atomic import atomic_path, ensure_free_space
from izoo.errors import IzooError

FORMAT = "izoo-inr"
FORMAT_VERSION = 1
#: gzip ships with every HDF5 build (readable without plugins); level 1 compresses float weights as well as
#: level 4 (ratio ~0.85 with the byte-shuffle filter) at ~1.5x the write speed, which bounds the merge
CODEC = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
CODEC_NAME = "gzip level 1 + shuffle filter"
#: bytes per chunk of a per-item dataset: small enough that reading one random item decompresses little
CHUNK_BYTES = 256 << 10

#: per-item columns and their numpy dtypes; string columns are stored as utf-8 variable-length strings
ITEM_COLUMNS: dict[str, Any] = {
    "index": np.int64,
    "item_id": str,
    "source_id": str,
    "split": str,
    "label": np.int64,
    "psnr": np.float32,
    "phase": str,
    "iterations": np.int64,
    "seconds": np.float32,
    "passed": np.bool_,
}
#: the quality-control phases in training order (SPEC §2): the one list, used by fitting, plans, reports and checks
PHASES = ("basic", "extended", "until_threshold")
STR_DTYPE = h5py.string_dtype(encoding="utf-8")
#: group holding the shared learned initialisation (init files, and shard files / archives fitted from one)
SHARED_INIT = "shared_init"


@dataclass
class InrFile:
    """A whole INR file in memory (shard-sized files; archives are read lazily by ``izoo.archive.reader``)."""

    params: dict[str, np.ndarray]
    items: pd.DataFrame
    attrs: dict[str, Any]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)


#: most items per chunk: keeps merge blocks (a multiple of every dataset's chunk rows) near one shard in size
MAX_CHUNK_ROWS = 512


def chunk_items(per_item_bytes: int, n_items: int, target_bytes: int = CHUNK_BYTES) -> int:
    """Items per HDF5 chunk: a power of two giving at most ~``target_bytes`` (1 .. ``MAX_CHUNK_ROWS``), or all items.

    Powers of two make every dataset's chunk rows divide the largest one, so a merge block aligned to the
    largest chunk is aligned for all of them and each chunk is compressed exactly once.
    """
    rows = max(1, min(MAX_CHUNK_ROWS, target_bytes // max(per_item_bytes, 1)))
    rows = 1 << (rows.bit_length() - 1)
    return int(max(1, min(max(n_items, 1), rows)))


def encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Structured attribute values become JSON strings; scalars and strings stay as they are."""
    out = {}
    for key, value in attrs.items():
        out[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else value
    return out


def decode_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of ``encode_attrs``: JSON strings become dicts/lists again."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str) and value[:1] in "[{":
            with contextlib.suppress(json.JSONDecodeError):   # a plain string that merely starts with [ or {
                value = json.loads(value)
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def base_attrs(model_family: str, architecture: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """Attributes every INR file carries: format, version, code version, creation time."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_family": model_family,
        "architecture": dict(architecture),
        "izoo_version": izoo.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "codec": CODEC_NAME,
        **extra,
    }


def normalise_items(items: pd.DataFrame) -> pd.DataFrame:
    """Check the per-item table has every column, with the layout's dtypes."""
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise ValueError(f"item table lacks columns {missing}")
    out = pd.DataFrame(index=range(len(items)))
    for col, dtype in ITEM_COLUMNS.items():
        values = items[col].to_numpy()
        out[col] = values.astype(str) if dtype is str else values.astype(dtype)
    return out


def create_datasets(h5: h5py.File, param_shapes: Mapping[str, tuple[int, ...]], n_items: int,
                    extra_shapes: Mapping[str, tuple[tuple[int, ...], Any]] | None = None,
                    maxshape_items: int | None = None, compress: bool = True) -> None:
    """Create empty ``/params``, ``/items`` and ``/extras`` datasets for ``n_items`` items (resizable if asked;
    ``compress=False`` leaves out the codec, for short-lived work files)."""
    maxn = maxshape_items if maxshape_items is not None else n_items
    codec = CODEC if compress else {}
    for name, shape in param_shapes.items():
        per_item = int(np.prod(shape)) * 4
        h5.create_dataset(f"params/{name}", shape=(n_items, *shape), maxshape=(maxn, *shape), dtype=np.float32,
                          chunks=(chunk_items(per_item, max(n_items, 1)), *shape), **codec)
    for col, dtype in ITEM_COLUMNS.items():
        h5.create_dataset(f"items/{col}", shape=(n_items,), maxshape=(maxn,),
                          dtype=STR_DTYPE if dtype is str else dtype, chunks=(min(max(n_items, 1), 65536),))
    for name, (shape, dtype) in (extra_shapes or {}).items():
        per_item = int(np.prod(shape)) * np.dtype(dtype).itemsize
        h5.create_dataset(f"extras/{name}", shape=(n_items, *shape), maxshape=(maxn, *shape), dtype=dtype,
                          chunks=(chunk_items(per_item, max(n_items, 1)), *shape), **codec)


def write_rows(h5: h5py.File, start: int, params: Mapping[str, np.ndarray], items: pd.DataFrame,
               extras: Mapping[str, np.ndarray] | None = None) -> None:
    """Write items ``start .. start+len(items)`` into datasets made by ``create_datasets``."""
    stop = start + len(items)
    items = normalise_items(items)
    for name, value in params.items():
        h5[f"params/{name}"][start:stop] = np.asarray(value, dtype=np.float32)
    for col in ITEM_COLUMNS:
        h5[f"items/{col}"][start:stop] = items[col].to_numpy()
    for name, value in (extras or {}).items():
        h5[f"extras/{name}"][start:stop] = value


def write_shared_init(h5: h5py.File, params: Mapping[str, np.ndarray]) -> None:
    """Store the shared learned init (per-item shapes) under ``/shared_init``."""
    for name, value in params.items():
        h5.create_dataset(f"{SHARED_INIT}/{name}", data=np.asarray(value, dtype=np.float32))


def shared_init_sha256(params: Mapping[str, np.ndarray]) -> str:
    """Content hash of a shared init: names, shapes and float32 bytes, in the given (layer) order."""
    digest = hashlib.sha256()
    for name, value in params.items():
        array = np.ascontiguousarray(value, dtype=np.float32)
        digest.update(f"{name}:{list(array.shape)};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def read_shared_init(h5: h5py.File) -> dict[str, np.ndarray] | None:
    """The ``/shared_init`` tensors of an open file, or ``None`` when its items started from a random init."""
    if SHARED_INIT not in h5:
        return None
    return {name: ds[:] for name, ds in h5[SHARED_INIT].items()}


def write_inr_file(path: str | Path, params: Mapping[str, np.ndarray], items: pd.DataFrame,
                   attrs: Mapping[str, Any], extras: Mapping[str, np.ndarray] | None = None,
                   shared_init: Mapping[str, np.ndarray] | None = None, compress: bool = True) -> Path:
    """Write a complete INR file atomically (temp file, then rename); ``shared_init``: the learned init, if any;
    ``compress=False`` for work files that are read back once (gzip compresses float weights only to ~0.85 and
    bounds the write speed)."""
    path = Path(path)
    n = len(items)
    for name, value in params.items():
        if value.shape[0] != n:
            raise ValueError(f"params/{name} has {value.shape[0]} items, the item table {n}")
    # uncompressed size bounds the compressed file from above
    ensure_free_space(path, sum(v.nbytes for v in params.values()) + sum(np.asarray(v).nbytes for v in (extras or {}).values())
                      + int(items.memory_usage(deep=True).sum()))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            create_datasets(h5, {k: tuple(v.shape[1:]) for k, v in params.items()}, n,
                            {k: (tuple(v.shape[1:]), v.dtype) for k, v in (extras or {}).items()}, compress=compress)
            write_rows(h5, 0, params, items, extras)
            if shared_init is not None:
                write_shared_init(h5, shared_init)
            h5.attrs.update(encode_attrs(attrs))
    return path


def read_items(h5: h5py.File) -> pd.DataFrame:
    """The per-item table of an open INR file."""
    cols = {}
    for col, dtype in ITEM_COLUMNS.items():
        data = h5[f"items/{col}"][:]
        cols[col] = [v.decode() if isinstance(v, bytes) else str(v) for v in data] if dtype is str else data
    return pd.DataFrame(cols)


def read_inr_file(path: str | Path) -> InrFile:
    """Read a whole INR file; a missing, truncated or foreign file raises a one-line ``IzooError``."""
    path = Path(path)
    if not path.exists():
        raise IzooError("INR file is missing", path, "rerun the job that writes it (snakemake reruns it automatically)")
    try:
        with h5py.File(path, "r") as h5:
            attrs = decode_attrs(h5.attrs)
            if attrs.get("format") != FORMAT:
                raise IzooError(f"not an izoo INR file (format={attrs.get('format')!r})", path,
                                "point izoo at a file written by izoo fit/merge")
            params = {name: ds[:] for name, ds in h5["params"].items()}
            extras = {name: ds[:] for name, ds in h5["extras"].items()} if "extras" in h5 else {}
            items = read_items(h5)
    except IzooError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise IzooError(f"INR file is corrupt or truncated ({type(exc).__name__}: {exc})", path,
                        "delete it and rerun the job that writes it") from exc
    return InrFile(params=params, items=items, attrs=attrs, extras=extras)


def param_sort_key(name: str) -> tuple:
    """Order parameter names layer by layer (``layer2`` before ``layer10``), weight before bias within a layer."""
    prefix, _, leaf = name.rpartition(".")
    natural = tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", prefix))
    return natural, {"weight": 0, "bias": 1}.get(leaf, 2), leaf


def read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (any order, unique) of ``ds``: one slice when they are dense, else one slice per run."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.empty((0, *ds.shape[1:]), dtype=ds.dtype)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    lo, hi = int(sorted_rows[0]), int(sorted_rows[-1]) + 1
    chunk_rows = ds.chunks[0] if ds.chunks else 1
    if hi - lo <= 2 * len(rows) + chunk_rows:
        data = ds[lo:hi][sorted_rows - lo]  # a slice decompresses each chunk once
    else:
        # h5py's fancy (list) selection is several times slower than plain slices, one per run of rows
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        data = np.concatenate([ds[int(run[0]):int(run[-1]) + 1] for run in np.split(sorted_rows, breaks)])
    out = np.empty_like(data)
    out[order] = data
    return out
