"""Merge per-shard INR files into one archive per dataset split, streaming block by block.

Each item of the split comes from the last file that holds it: the basic shard files first, then the
``--refined`` files in the order given (extended jobs, then until_threshold jobs), so an item refined in
two phases ends up with its until_threshold weights. Refinement jobs pack items across shards and splits;
items of other splits are skipped. The archive is written in manifest order whatever order the files come in.

Memory stays bounded by one block of output rows (about one shard): rows are gathered from their source
files block by block, written as whole output chunks (each chunk is compressed exactly once), and the
archive is written under a temporary name that is renamed onto the final path only after it passed the
structural checks of ``izoo.archive.verify``. A killed merge leaves only a hidden ``.NAME.tmp-PID`` file,
which the next merge of the same output deletes.

``virtual=True`` writes an HDF5 virtual dataset (VDS) instead of copying weights: every ``/params`` and
``/extras`` dataset maps each item, run by run, onto the row of the file it comes from (paths relative to
the archive's folder, so archive and shard files must move together). The small ``/items`` table is copied.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections import OrderedDict
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np
import pandas as pd

import izoo.archive.layout as layout
from izoo.archive.checks import check_structure, coordinate_convention_of
from izoo.atomic import atomic_path, ensure_free_space, remove_stale_temps
from izoo.datasets.manifest import load_manifest
from izoo.errors import IzooError

log = logging.getLogger(__name__)

#: attributes that describe one shard or job file, not the merged archive
PER_FILE_ATTRS = ("shard", "job", "phase", "created", "n_items", "merged_from", "virtual", "virtual_sources",
                  "phase_counts",
                  "phase_report", "work_fingerprint", "split")
#: source files kept open at once (ImageNet has ~1,500 shard files; the open-file limit is often 1,024)
OPEN_FILES = 64
#: HDF5 chunk cache per open source file: refined rows of adjacent blocks often share a compressed chunk
SOURCE_CHUNK_CACHE = 16 << 20


@dataclass
class MergeResult:
    """What a merge wrote."""

    path: Path
    n_items: int
    phase_counts: dict[str, int]
    bytes_on_disk: int
    param_bytes: int
    seconds: float
    virtual: bool


@dataclass
class _SourceFile:
    """Header of one shard/job file: enough to plan the merge without reading any weights."""

    path: Path
    kind: str  # "basic" or "refined"
    attrs: dict[str, Any]
    index: np.ndarray
    item_id: np.ndarray
    params: dict[str, tuple[tuple[int, ...], np.dtype]]
    extras: dict[str, tuple[tuple[int, ...], np.dtype]] = field(default_factory=dict)


def _read_header(path: Path, kind: str) -> _SourceFile:
    fix = ("rerun the fitting job that writes it (delete the file first if it is corrupt)" if kind == "basic"
           else "rerun the refinement job that writes it (delete the file first if it is corrupt)")
    if not path.exists():
        raise IzooError(f"{kind} INR file is missing", path, fix)
    try:
        with h5py.File(path, "r") as h5:
            attrs = layout.decode_attrs(h5.attrs)
            if attrs.get("format") != layout.FORMAT:
                raise IzooError(f"not an izoo INR file (format={attrs.get('format')!r})", path, fix)
            index = h5["items/index"][:]
            item_id = h5["items/item_id"].asstr()[:]
            params = {name: (tuple(ds.shape[1:]), ds.dtype) for name, ds in h5["params"].items()}
            extras = ({name: (tuple(ds.shape[1:]), ds.dtype) for name, ds in h5["extras"].items()}
                      if "extras" in h5 else {})
            lengths = {f"params/{n}": ds.shape[0] for n, ds in h5["params"].items()}
            lengths.update({f"items/{n}": h5[f"items/{n}"].shape[0] for n in layout.ITEM_COLUMNS})
            if "extras" in h5:
                lengths.update({f"extras/{n}": ds.shape[0] for n, ds in h5["extras"].items()})
    except IzooError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise IzooError(f"{kind} INR file is corrupt or truncated ({type(exc).__name__}: {exc})", path, fix) from exc
    wrong = {k: v for k, v in lengths.items() if v != len(index)}
    if wrong:
        raise IzooError(f"datasets disagree on the item count ({len(index)} indices, {wrong})", path, fix)
    if len(np.unique(index)) != len(index):
        raise IzooError("holds the same manifest index twice", path, fix)
    if not params:
        raise IzooError("holds no /params datasets", path, fix)
    return _SourceFile(path, kind, attrs, index, item_id, params, extras)


def _check_same_model(ref: _SourceFile, other: _SourceFile) -> None:
    fix = "refit it with the same config as the other shards, or merge only files of one config"
    for key in ("model_family", "architecture"):
        if ref.attrs.get(key) != other.attrs.get(key):
            raise IzooError(f"{key} differs from {ref.path.name} ({other.attrs.get(key)!r} vs {ref.attrs.get(key)!r})",
                            other.path, fix)
    if ref.attrs.get("model_family", "siren") == "siren":
        # named, so shards fitted before the names were introduced still merge with newer ones
        ours, theirs = coordinate_convention_of(ref.attrs, ref.path), coordinate_convention_of(other.attrs, other.path)
        if ours != theirs:
            raise IzooError(f"coordinate_convention differs from {ref.path.name} ({theirs} vs {ours})", other.path, fix)
    ref_init, other_init = ((f.attrs.get("learned_init") or {}).get("sha256") for f in (ref, other))
    if ref_init != other_init:
        raise IzooError(f"was fitted from another initialisation than {ref.path.name} (learned init sha256 "
                        f"{other_init} vs {ref_init})", other.path,
                        "refit it from the dataset's current init file (the fit fingerprint includes its hash)")
    if ref.params != other.params:
        raise IzooError(f"parameter shapes differ from {ref.path.name} ({other.params} vs {ref.params})", other.path, fix)
    if ref.extras != other.extras:
        raise IzooError(f"extras differ from {ref.path.name} ({other.extras} vs {ref.extras})", other.path, fix)


class _OpenFiles:
    """A small LRU of open source files, so thousands of shard files never exceed the open-file limit."""

    def __init__(self, sources: Sequence[_SourceFile], limit: int = OPEN_FILES):
        self.sources = sources
        self.limit = limit
        self.handles: OrderedDict[int, h5py.File] = OrderedDict()

    def __getitem__(self, fid: int) -> h5py.File:
        if fid in self.handles:
            self.handles.move_to_end(fid)
            return self.handles[fid]
        if len(self.handles) >= self.limit:
            self.handles.popitem(last=False)[1].close()
        path = self.sources[fid].path
        try:
            handle = h5py.File(path, "r", rdcc_nbytes=SOURCE_CHUNK_CACHE)
        except OSError as exc:
            raise IzooError(f"INR file became unreadable during the merge ({exc})", path,
                            "delete it, rerun the job that writes it, then rerun the merge") from exc
        self.handles[fid] = handle
        return handle

    def close(self) -> None:
        """Close every handle."""
        while self.handles:
            self.handles.popitem()[1].close()


def _decode_str(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _merged_attrs(ref: _SourceFile, sources: Sequence[_SourceFile], dataset: str | None, split: str,
                  phase_counts: dict[str, int], virtual: bool, out: Path) -> dict[str, Any]:
    attrs = {k: v for k, v in ref.attrs.items() if k not in PER_FILE_ATTRS}
    fitting_by_phase: dict[str, Any] = {}
    for src in sources:
        phase = str(src.attrs.get("phase", "basic" if src.kind == "basic" else "refined"))
        if "fitting" in src.attrs and phase not in fitting_by_phase:
            fitting_by_phase[phase] = src.attrs["fitting"]
    base = layout.base_attrs(str(ref.attrs.get("model_family", "siren")), ref.attrs.get("architecture", {}))
    attrs.update({k: base[k] for k in ("format", "format_version", "izoo_version", "created", "codec")})
    attrs["architecture"] = dict(ref.attrs.get("architecture", {}))
    attrs["architecture"].setdefault("layer_shapes", {name: list(shape) for name, (shape, _) in ref.params.items()})
    attrs.update({
        "dataset": dataset if dataset is not None else ref.attrs.get("dataset", ""),
        "split": split,
        "n_items": int(sum(phase_counts.values())),
        "phase_counts": phase_counts,
        "virtual": bool(virtual),
        "merged_from": [os.path.relpath(s.path, out.parent) for s in sources],
    })
    if fitting_by_phase:
        attrs["fitting_by_phase"] = fitting_by_phase
    return attrs


def _runs(src_file: np.ndarray, src_row: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Maximal runs ``(start, length, file, first_row)`` of consecutive rows of one file, in output order."""
    n = len(src_file)
    breaks = np.flatnonzero((src_file[1:] != src_file[:-1]) | (src_row[1:] != src_row[:-1] + 1)) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [n]])
    return [(int(a), int(b - a), int(src_file[a]), int(src_row[a])) for a, b in zip(starts, stops)]


def _check_covered(src_file: np.ndarray, wanted: pd.DataFrame, split: str, manifest_path: Any) -> None:
    """Every item of the split must be in a basic shard file (refinement only ever refits fitted items)."""
    missing = np.flatnonzero(src_file < 0)
    if len(missing):
        shard_col = wanted["shard"] if "shard" in wanted.columns else pd.Series(["?"] * len(wanted))
        missing_shards = sorted(shard_col.iloc[missing].astype(str).unique())
        raise IzooError(f"{len(missing)} items of split {split!r} are in no basic shard file given "
                        f"(shards {missing_shards[:5]}{' ...' if len(missing_shards) > 5 else ''}; "
                        f"e.g. index {int(wanted['index'][missing[0]])})",
                        manifest_path, "pass every basic shard file of the split with --shards (fit missing shards first)")


def merge_split(manifest: str | Path | pd.DataFrame, split: str, shards: Sequence[str | Path], out: str | Path,
                refined: Sequence[str | Path] = (), dataset: str | None = None, virtual: bool = False,
                block_items: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> MergeResult:
    """Merge the split's basic shard files and refined job files into ``out`` (manifest order), atomically."""
    t0 = time.perf_counter()
    out = Path(out)
    manifest_path = manifest if not isinstance(manifest, pd.DataFrame) else "manifest"
    table = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest)
    wanted = table[table["split"].astype(str) == split].reset_index(drop=True)
    if wanted.empty:
        raise IzooError(f"split {split!r} has no items in the manifest (splits: {sorted(table['split'].unique())})",
                        manifest_path, "pass a split the manifest lists")
    n = len(wanted)
    position = pd.Index(wanted["index"].to_numpy(np.int64))
    if not position.is_unique:
        raise IzooError("manifest lists an index twice", manifest_path, "rerun `izoo manifest`")

    if not shards:
        raise IzooError(f"no basic shard files given for split {split!r}", out, "pass them with --shards")
    sources = [_read_header(Path(p), "basic") for p in shards] + [_read_header(Path(p), "refined") for p in refined]
    ref = sources[0]
    for other in sources[1:]:
        _check_same_model(ref, other)

    src_file = np.full(n, -1, dtype=np.int64)
    src_row = np.full(n, -1, dtype=np.int64)
    for fid, src in enumerate(sources):
        if fid == len(shards):
            _check_covered(src_file, wanted, split, manifest_path)
        pos = position.get_indexer(src.index)
        take = pos >= 0
        if src.kind == "basic" and not take.all():
            bad = int(src.index[~take][0])
            raise IzooError(f"holds {int((~take).sum())} items that are not in split {split!r} of the manifest "
                            f"(e.g. index {bad})", src.path,
                            "pass only this split's basic shard files, or refit the shard from the current manifest")
        rows = np.flatnonzero(take)
        pos = pos[take]
        expected_ids = wanted["item_id"].to_numpy(dtype=object)[pos]
        mismatch = np.flatnonzero(src.item_id[rows].astype(object) != expected_ids)
        if len(mismatch):
            k = mismatch[0]
            raise IzooError(f"item ids differ from the manifest (index {int(src.index[rows[k]])}: file "
                            f"{src.item_id[rows[k]]!r}, manifest {expected_ids[k]!r})", src.path,
                            "the file was fitted from another manifest: delete it and refit")
        if src.kind == "basic":
            clash = pos[src_file[pos] >= 0]
            if len(clash):
                other = sources[int(src_file[clash[0]])].path.name
                raise IzooError(f"holds index {int(wanted['index'][clash[0]])}, which {other} holds too", src.path,
                                "pass each basic shard file once")
        src_file[pos] = fid
        src_row[pos] = rows

    if not refined:
        _check_covered(src_file, wanted, split, manifest_path)

    remove_stale_temps(out)   # before the free-space check, so their space counts as free
    # a copy merge writes about what its inputs hold (same codec); a virtual one only mappings
    ensure_free_space(out, 0 if virtual else sum(src.path.stat().st_size for src in sources))
    files = _OpenFiles(sources)
    phase_counts: dict[str, int] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1)))
    try:
        with atomic_path(out) as tmp:
            with h5py.File(tmp, "w") as h5:
                mapped: list[str] = []
                if virtual:
                    mapped = _write_virtual(h5, sources, src_file, src_row, out.parent)
                    param_names: list[str] = []
                    extra_names: list[str] = []
                    layout.create_datasets(h5, {}, n)
                else:
                    layout.create_datasets(h5, {k: s for k, (s, _) in ref.params.items()}, n,
                                           {k: (s, d) for k, (s, d) in ref.extras.items()})
                    param_names, extra_names = list(ref.params), list(ref.extras)
                # chunk rows are powers of two (or every item): a multiple of the largest aligns them all
                out_chunk = max([h5[f"params/{p}"].chunks[0] for p in param_names]
                                + [h5[f"extras/{e}"].chunks[0] for e in extra_names]
                                or [h5["items/index"].chunks[0]])
                if block_items is None:
                    block_items = max(len(s.index) for s in sources if s.kind == "basic")
                block = max(out_chunk, block_items // out_chunk * out_chunk)
                for start in range(0, n, block):
                    stop = min(n, start + block)
                    _copy_block(h5, files, src_file[start:stop], src_row[start:stop], start, param_names,
                                extra_names, phase_counts, pool)
                    h5.flush()
                    if progress is not None:
                        progress(stop, n)
                attrs = _merged_attrs(ref, sources, dataset, split, dict(sorted(phase_counts.items())), virtual, out)
                shared_init = layout.read_shared_init(files[0])
                if shared_init is not None:
                    layout.write_shared_init(h5, shared_init)
                if virtual:
                    attrs["virtual_sources"] = mapped
                h5.attrs.update(layout.encode_attrs(attrs))
            files.close()
            # a copied archive had its weights checked for NaN/Inf block by block while copying
            problems = check_structure(tmp, manifest=table, scan_weights=virtual)
            if problems:
                more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
                raise IzooError(f"merged archive failed its checks: {problems[0]}{more}", out,
                                "the source files are inconsistent: run `izoo verify` on them, refit the named ones")
    finally:
        files.close()
        pool.shutdown()
    param_bytes = n * sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in ref.params.values())
    seconds = time.perf_counter() - t0
    log.info("merged %d items of %s into %s in %.1f s", n, split, out, seconds)
    return MergeResult(out, n, dict(sorted(phase_counts.items())), out.stat().st_size, param_bytes, seconds, virtual)


def _direct_chunk_rows(ds: h5py.Dataset) -> int | None:
    """Rows per chunk when ``ds`` can take pre-compressed chunks (gzip + shuffle only, whole rows per chunk)."""
    if ds.compression != "gzip" or not ds.shuffle or ds.fletcher32 or ds.scaleoffset is not None:
        return None
    if ds.chunks is None or tuple(ds.chunks[1:]) != tuple(ds.shape[1:]):
        return None
    return int(ds.chunks[0])


def _deflate_chunk(piece: np.ndarray, rows: int, level: int) -> bytes:
    """One HDF5 chunk through the shuffle and deflate filters, exactly as HDF5 would encode it."""
    if len(piece) < rows:  # HDF5 stores edge chunks at full size
        piece = np.concatenate([piece, np.zeros((rows - len(piece), *piece.shape[1:]), dtype=piece.dtype)])
    raw = np.ascontiguousarray(piece)
    size = raw.dtype.itemsize
    if size > 1 and raw.size > 1:
        raw = raw.view(np.uint8).reshape(-1, size).T  # HDF5 shuffle: byte j of every element, then byte j+1
    return zlib.compress(np.ascontiguousarray(raw).tobytes(), level)


def write_rows_compressed(ds: h5py.Dataset, start: int, data: np.ndarray, pool: Executor | None) -> None:
    """``ds[start:start+len(data)] = data``, compressing whole chunks on ``pool``'s threads when possible.

    h5py runs the gzip filter on one thread under its global lock; zlib releases the GIL, so compressing
    chunks ourselves and storing them with ``write_direct_chunk`` uses every core (compression bounds a merge).
    """
    rows = _direct_chunk_rows(ds)
    if pool is None or rows is None or start % rows or (len(data) % rows and start + len(data) != ds.shape[0]):
        ds[start:start + len(data)] = data
        return
    level = int(ds.compression_opts)
    pieces = [data[a:a + rows] for a in range(0, len(data), rows)]
    encoded = pool.map(lambda piece: _deflate_chunk(piece, rows, level), pieces)
    tail = (0,) * (ds.ndim - 1)
    for k, blob in enumerate(encoded):
        ds.id.write_direct_chunk((start + k * rows, *tail), blob, filter_mask=0)


def _copy_block(h5: h5py.File, files: _OpenFiles, block_file: np.ndarray, block_row: np.ndarray, start: int,
                param_names: Sequence[str], extra_names: Sequence[str], phase_counts: dict[str, int],
                pool: Executor | None = None) -> None:
    """Gather output rows ``start .. start+len(block_file)`` from their source files and write them once."""
    m = len(block_file)
    buffers: dict[str, np.ndarray] = {}
    for fid in np.unique(block_file):
        sel = np.flatnonzero(block_file == fid)
        rows = block_row[sel]
        src = files[int(fid)]
        for key in [f"params/{p}" for p in param_names] + [f"extras/{e}" for e in extra_names] + \
                   [f"items/{c}" for c in layout.ITEM_COLUMNS]:
            ds = src[key]
            data = layout.read_rows(ds, rows)
            if key not in buffers:
                dtype = object if h5[key].dtype.kind == "O" else h5[key].dtype
                buffers[key] = np.empty((m, *ds.shape[1:]), dtype=dtype)
            buffers[key][sel] = _decode_str(data) if buffers[key].dtype == object else data
            if key.startswith("params/"):
                # checked here, in memory, instead of re-reading the written archive (750 GB for ImageNet)
                finite = np.isfinite(data.reshape(len(data), -1)).all(axis=1)
                if not finite.all():
                    bad = src["items/index"][:][rows[~finite]]
                    raise IzooError(f"{key} has NaN/Inf weights in {len(bad)} items (index "
                                    f"{', '.join(str(int(i)) for i in bad[:5])})", src.filename,
                                    "delete the file and rerun the job that wrote it (lower the lr if it recurs)")
    for key, data in buffers.items():
        if data.dtype == object:
            h5[key][start:start + m] = data
        else:
            write_rows_compressed(h5[key], start, data, pool)
    phases, counts = np.unique(buffers["items/phase"].astype(str), return_counts=True)
    for phase, count in zip(phases, counts):
        phase_counts[str(phase)] = phase_counts.get(str(phase), 0) + int(count)


def _write_virtual(h5: h5py.File, sources: Sequence[_SourceFile], src_file: np.ndarray, src_row: np.ndarray,
                   folder: Path) -> list[str]:
    """``/params`` and ``/extras`` as virtual datasets mapping each item onto its source file's row; returns the
    mapped files (relative to ``folder``).

    Uses h5py's low-level ``set_virtual`` rather than ``VirtualLayout``: the latter deep-copies a selection per
    mapping (~0.5 ms each), too slow for the ~10^5 runs an ImageNet split with scattered refined items has.
    """
    runs = _runs(src_file, src_row)
    ref = sources[0]
    n = len(src_file)
    for group, shapes in (("params", ref.params), ("extras", ref.extras)):
        parent = h5.require_group(group)
        for name, (shape, dtype) in shapes.items():
            dtype = np.dtype(dtype)
            tail = (0,) * len(shape)
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            # NaN fill: a missing source file reads as NaN weights, which verify reports
            dcpl.set_fill_value(np.full((), np.nan, dtype=dtype) if dtype.kind == "f" else np.zeros((), dtype=dtype))
            vspace = h5py.h5s.create_simple((n, *shape))
            src_spaces: dict[int, tuple[bytes, Any]] = {}
            dset_name = f"{group}/{name}".encode()
            for start, length, fid, row in runs:
                if fid not in src_spaces:
                    src = sources[fid]
                    src_spaces[fid] = (os.path.relpath(src.path, folder).encode(),
                                       h5py.h5s.create_simple((len(src.index), *shape)))
                file_name, src_space = src_spaces[fid]
                vspace.select_hyperslab((start, *tail), (length, *shape))
                src_space.select_hyperslab((row, *tail), (length, *shape))
                dcpl.set_virtual(vspace, file_name, dset_name, src_space)  # copies both selections
            h5py.h5d.create(parent.id, name.encode(), h5py.h5t.py_create(dtype), h5py.h5s.create_simple((n, *shape)),
                            dcpl=dcpl)
    return sorted({os.path.relpath(sources[fid].path, folder) for _, _, fid, _ in runs})


def merge_main(args: Any) -> int:
    """``izoo merge``: build one split's archive from shard and refinement files."""
    result = merge_split(args.manifest, args.split, args.shards, args.out, refined=args.refined or (),
                         dataset=args.dataset, virtual=args.virtual)
    mb = result.bytes_on_disk / 1e6
    print(f"{result.path}: {result.n_items} items ({', '.join(f'{k} {v}' for k, v in result.phase_counts.items())}), "
          f"{mb:.1f} MB{' (virtual)' if result.virtual else ''}, {result.seconds:.1f} s")
    return 0


__all__ = ["MergeResult", "merge_split", "merge_main"]
