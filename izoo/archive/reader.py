"""Read an izoo archive as a torch ``Dataset`` of INRs, in fast contiguous batches, and render INRs back.

API (``izoo.archive.open`` is ``open_archive``)::

    arch = izoo.archive.open("results/cifar10/archive/train.h5", device="cuda", in_memory=False)
    len(arch); arch.spec                  # SirenSpec (NerfSpec for nerf); arch.attrs (decoded dict); arch.model_family
    arch.param_names                      # ["layer0.weight", "layer0.bias", ...]: the order of every params list
    arch.labels, arch.psnr, arch.index    # numpy [N] (label -1 = none; index = manifest row)
    arch.items                            # pandas table of every per-item column
    arch[i]                               # {"params": [Tensor w0, b0, ...] (no batch dim), "label", "index", "psnr"}
                                          #  + one entry per extra ("label_map" [H, W] uint8, ...)
    arch.params_batch([3, 4, 9])          # [w0 [B,out,in], b0 [B,out], ...] on arch.device: izoo.siren.model.forward-ready
    arch.extras("label_map", rows)        # numpy [B, ...]; arch.label_maps(rows) is the segmentation shortcut
    arch.shared_init()                    # model.init: learned only: [w0, b0, ...] the items started from (else None)
    for batch in arch.loader(batch_size=512, shuffle=True, seed=0):   # dict of batched tensors, as arch[i] batched
        ...
    for batch in arch.dataloader(batch_size=512, shuffle=True, num_workers=4, pin_memory=True):  # torch DataLoader
        ...                                   # the same dicts, CPU tensors, batches of shuffled contiguous runs
    arch.coordinate_convention            # "pixel_centers" (izoo fits) or "linspace_endpoints" (released INRs)
    arch.render([0, 1], height=64, width=64)   # [B, 3, H, W] in [0, 1], any resolution, on that grid

Reads go through one h5py slice per dataset per contiguous run of items (chunked along items), so a batch
costs a few chunk decompressions, not one read per item. ``shuffle=True`` reads ``pool_batches`` randomly
placed contiguous runs, pools them and permutes the pool: batches differ every epoch while every read stays
contiguous. ``in_memory=True`` reads the whole archive into RAM once (CIFAR's 1.4 GB; not ImageNet's 750 GB).
The file is (re)opened lazily per process, so the Dataset works with multi-worker ``torch.utils.data.DataLoader``;
``dataloader`` builds one whose ``ContiguousRunBatchSampler`` keeps every read a slice and whose dataset reads a
whole batch per call.

The ``model_family`` attribute picks the family's view (``izoo.archive.families``: spec, parameter order,
coordinate convention, renderer), registered by ``izoo.siren.archive`` and ``izoo.nerf.archive`` and imported by
name on first use: ``siren`` renders the batched SIREN on the pixel grid; ``nerf`` renders each scene from its
first archived held-out camera (other cameras and density grids: ``izoo.nerf.archive.NerfArchive``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

import izoo.archive.layout as layout
from izoo.archive.checks import virtual_source_problems
from izoo.archive.families import archive_family
from izoo.errors import IzooError
from izoo.siren import model as siren

#: per open dataset: HDF5 keeps decompressed chunks, so neighbouring items and batches share one decompression
CHUNK_CACHE_BYTES = 32 << 20
CHUNK_CACHE_SLOTS = 10007


class InrArchive(Dataset):
    """An izoo archive as a torch ``Dataset`` of INRs (see the module docstring for the API)."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", in_memory: bool = False):
        self.path = Path(path)
        self.device = torch.device(device)
        if not self.path.exists():
            raise IzooError("archive is missing", self.path, "run `izoo merge` (the workflow's merge rule) first")
        self._h5: h5py.File | None = None
        self._pid = -1
        try:
            h5 = self._file()
            self.attrs = layout.decode_attrs(h5.attrs)
            if self.attrs.get("format") != layout.FORMAT:
                raise IzooError(f"not an izoo archive (format={self.attrs.get('format')!r})", self.path,
                                "open a file written by `izoo merge`")
            self.model_family = str(self.attrs.get("model_family", "siren"))
            #: how this family's files read (spec, parameter order, coordinates, renderer); None: unknown family
            self.family = archive_family(self.model_family)
            names = list(h5["params"])
            self.param_names = (self.family.param_order(self.attrs, names) if self.family is not None
                                else sorted(names, key=layout.param_sort_key))
            self.param_shapes = {n: tuple(h5[f"params/{n}"].shape[1:]) for n in self.param_names}
            self.extra_names = sorted(h5["extras"]) if "extras" in h5 else []
            self.labels = h5["items/label"][:]
            self.index = h5["items/index"][:]
            self.psnr = h5["items/psnr"][:]
            missing = virtual_source_problems(h5, self.path.parent, thorough=False)
        except IzooError:
            self.close()
            raise
        except (OSError, KeyError, ValueError) as exc:
            self.close()
            raise IzooError(f"archive is corrupt or truncated ({type(exc).__name__}: {exc})", self.path,
                            "delete it and rerun `izoo merge`") from exc
        if missing:
            self.close()
            raise IzooError(missing[0], self.path, "virtual archives need their shard files in place: restore them "
                            "or rerun `izoo merge` without --virtual")
        self.spec: Any = self.family.spec(self.attrs) if self.family is not None else None
        #: SIREN archives: where pixels sit (``siren.COORDINATE_CONVENTIONS``); NeRF archives keep their camera text
        self.coordinate_convention = (self.family.coordinate_convention(self.attrs, self.path)
                                      if self.family is not None else str(self.attrs.get("coordinate_convention", "")))
        self._memory: dict[str, np.ndarray] | None = None
        if in_memory:
            h5 = self._file()
            keys = [f"params/{n}" for n in self.param_names] + [f"extras/{n}" for n in self.extra_names]
            self._memory = {k: h5[k][:] for k in keys}

    # -- file handling -------------------------------------------------------------------------------------
    def _file(self) -> h5py.File:
        """The open file of this process (h5py handles must not cross a fork)."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_nslots=CHUNK_CACHE_SLOTS)
            self._pid = os.getpid()
            self._datasets = {}
        return self._h5

    def _dataset(self, key: str) -> h5py.Dataset:
        """Open datasets are kept: HDF5's chunk cache lives as long as the dataset handle, not the file."""
        h5 = self._file()
        if key not in self._datasets:
            self._datasets[key] = h5[key]
        return self._datasets[key]

    def close(self) -> None:
        """Close the file (it reopens on the next read)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None
        self._datasets = {}

    def __enter__(self) -> "InrArchive":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"] = None
        state["_datasets"] = {}
        return state

    # -- reading -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def _read(self, key: str, rows: slice | np.ndarray) -> np.ndarray:
        if self._memory is not None and key in self._memory:
            return self._memory[key][rows]
        ds = self._dataset(key)
        return ds[rows] if isinstance(rows, slice) else layout.read_rows(ds, rows)

    def _rows(self, indices: Sequence[int] | np.ndarray | slice | torch.Tensor) -> slice | np.ndarray:
        if isinstance(indices, slice):
            return slice(*indices.indices(len(self)))
        rows = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64).reshape(-1)
        rows = np.where(rows < 0, rows + len(self), rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"item rows {rows.min()}..{rows.max()} outside an archive of {len(self)} items")
        if len(rows) > 1 and np.all(np.diff(rows) == 1):
            return slice(int(rows[0]), int(rows[-1]) + 1)  # one contiguous read
        return rows

    def _tensor(self, array: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device or self.device, non_blocking=True)

    def coordinate_grid(self, height: int, width: int) -> torch.Tensor:
        """``[H*W, 2]`` query coordinates of an H×W image under this archive's convention, on ``device``."""
        return siren.coordinate_grid(height, width, device=self.device, convention=self.coordinate_convention)

    def params_batch(self, indices: Sequence[int] | np.ndarray | slice | torch.Tensor) -> list[torch.Tensor]:
        """Stacked parameters ``[B, ...]`` of the given item rows, in ``param_names`` order, on ``device``."""
        rows = self._rows(indices)
        return [self._tensor(self._read(f"params/{n}", rows)) for n in self.param_names]

    def shared_init(self) -> list[torch.Tensor] | None:
        """The learned init every item started from (per-item shapes, ``param_names`` order), or ``None``."""
        stored = layout.read_shared_init(self._file())
        return None if stored is None else [self._tensor(stored[n]) for n in self.param_names]

    def extras(self, name: str, indices: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """Per-item extra ``name`` (``label_map``, camera poses, ...) of the given rows (all when None)."""
        if name not in self.extra_names:
            raise IzooError(f"archive has no extra {name!r} (it has {self.extra_names})", self.path,
                            "use an archive of a dataset that stores it")
        return self._read(f"extras/{name}", self._rows(slice(None) if indices is None else indices))

    def label_maps(self, indices: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """Segmentation label maps ``[B, H, W]`` uint8 (255 = ignore) of the given rows."""
        return self.extras("label_map", indices)

    @property
    def items(self) -> pd.DataFrame:
        """The per-item table (every column of ``layout.ITEM_COLUMNS``)."""
        return layout.read_items(self._file())

    def batch(self, indices: Sequence[int] | np.ndarray | slice, with_extras: bool = True,
              device: torch.device | str | None = None) -> dict[str, Any]:
        """A batch dict: ``params`` (stacked list), ``label``/``index`` (int64), ``psnr`` and the extras, as tensors
        on ``device`` (default: the archive's)."""
        rows = self._rows(indices)
        dev = None if device is None else torch.device(device)
        out: dict[str, Any] = {
            "params": [self._tensor(self._read(f"params/{n}", rows), dev) for n in self.param_names],
            "label": self._tensor(self.labels[rows], dev),
            "index": self._tensor(self.index[rows], dev),
            "psnr": self._tensor(self.psnr[rows], dev),
        }
        if with_extras:
            for name in self.extra_names:
                value = self._read(f"extras/{name}", rows)
                # text extras (NeRF class names) stay a list of str: torch has no string tensors
                out[name] = ([v.decode() if isinstance(v, bytes) else str(v) for v in value]
                             if value.dtype.kind in "SUO" else self._tensor(value, dev))
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= int(i) < len(self):
            raise IndexError(f"item {i} outside an archive of {len(self)} items")
        row = int(i) % len(self)
        out = self.batch(slice(row, row + 1))
        out["params"] = [p[0] for p in out["params"]]
        for key in ("label", "index", "psnr"):
            out[key] = out[key][0].item()
        for name in self.extra_names:
            out[name] = out[name][0]
        return out

    def loader(self, batch_size: int = 256, shuffle: bool = False, drop_last: bool = False, seed: int = 0,
               indices: Sequence[int] | np.ndarray | None = None, pool_batches: int = 8,
               with_extras: bool = True) -> "InrLoader":
        """Iterable of batch dicts (see ``batch``) read in contiguous runs; ``indices`` restricts it to those rows."""
        return InrLoader(self, batch_size, shuffle, drop_last, seed, indices, pool_batches, with_extras)

    def run_length(self) -> int:
        """Items per chunk of the largest parameter dataset: the contiguous run one decompression yields."""
        h5 = self._file()
        largest = max(self.param_names, key=lambda n: int(np.prod(self.param_shapes[n])))
        chunks = h5[f"params/{largest}"].chunks
        return int(chunks[0]) if chunks else 1

    def dataloader(self, batch_size: int = 256, shuffle: bool = False, num_workers: int = 0,
                   drop_last: bool = False, seed: int = 0, indices: Sequence[int] | np.ndarray | None = None,
                   run_length: int | None = None, pin_memory: bool = False, with_extras: bool = True,
                   **loader_kwargs: Any) -> DataLoader:
        """A ``torch.utils.data.DataLoader`` of batch dicts (see ``batch``, CPU tensors) over contiguous item runs.

        Batches come from ``ContiguousRunBatchSampler`` (``run_length`` items per run, default one chunk), each read
        with one h5py slice per run; workers reopen the file themselves. Extra keyword arguments go to ``DataLoader``
        (``prefetch_factor``, ``persistent_workers``, ...).
        """
        sampler = ContiguousRunBatchSampler(len(self) if indices is None else indices, batch_size,
                                            run_length or self.run_length(), shuffle, drop_last, seed)
        return DataLoader(_BatchReads(self, with_extras), batch_sampler=sampler, num_workers=num_workers,
                          pin_memory=pin_memory, collate_fn=_whole_batch, **loader_kwargs)

    def render(self, indices: Sequence[int] | np.ndarray | slice | torch.Tensor, height: int,
               width: int) -> torch.Tensor:
        """Render items back to images ``[B, C, H, W]`` in [0, 1] at any resolution (family's registered renderer)."""
        if self.family is None:
            raise IzooError(f"no renderer registered for model family {self.model_family!r}", self.path,
                            "import the module that registers it (izoo.archive.families.register_archive_family)")
        rows = self._rows(indices)
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else rows
        return self.family.render(self, rows, int(height), int(width))

    def __repr__(self) -> str:
        return (f"InrArchive({str(self.path)!r}, items={len(self)}, family={self.model_family!r}, "
                f"params={[self.param_shapes[n] for n in self.param_names]}, extras={self.extra_names})")


class InrLoader:
    """Batches of an ``InrArchive`` read as contiguous runs (one h5py slice per dataset per run)."""

    def __init__(self, archive: InrArchive, batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                 indices: Sequence[int] | np.ndarray | None, pool_batches: int, with_extras: bool):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.archive = archive
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)
        self.rows = np.arange(len(archive)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.pool_batches = max(1, int(pool_batches))
        self.with_extras = with_extras
        self.epoch = 0

    def __len__(self) -> int:
        full, rest = divmod(len(self.rows), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        bs = self.batch_size
        runs = [self.rows[a:a + bs] for a in range(0, len(self.rows), bs)]
        if not self.shuffle:
            for k, run in enumerate(runs):
                if len(run) == bs or not self.drop_last:
                    yield self.archive.batch(run, self.with_extras)
            return
        order = rng.permutation(len(runs))
        pending: dict[str, Any] | None = None
        for p in range(0, len(order), self.pool_batches):
            pool = [self.archive.batch(runs[k], self.with_extras) for k in order[p:p + self.pool_batches]]
            if pending is not None:
                pool.insert(0, pending)
            merged = _cat(pool)
            n = len(merged["index"])
            perm = torch.from_numpy(rng.permutation(n)).to(merged["index"].device)
            merged = _take(merged, perm)
            full = n // bs * bs
            for a in range(0, full, bs):
                yield _take(merged, slice(a, a + bs))
            pending = _take(merged, slice(full, n)) if full < n else None
        if pending is not None and not self.drop_last:
            yield pending


class _BatchReads(Dataset):
    """The archive as ``DataLoader`` sees it: one batched CPU read per index list (extras only when asked)."""

    def __init__(self, archive: InrArchive, with_extras: bool):
        self.archive, self.with_extras = archive, with_extras

    def __len__(self) -> int:
        return len(self.archive)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.archive[i]

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        return self.archive.batch(indices, self.with_extras, device="cpu")


def _whole_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """``collate_fn`` of ``InrArchive.dataloader``: ``__getitems__`` already returns the collated batch."""
    return batch


class ContiguousRunBatchSampler(Sampler[list[int]]):
    """Batches of item rows built from runs of ``run_length`` consecutive rows (one chunk each by default).

    Unshuffled: consecutive rows. Shuffled: the runs are permuted every epoch (``set_epoch`` or one more pass) and
    each batch is the concatenation of the next runs, in shuffled row order within the batch, so every read stays a
    contiguous slice while batches differ every epoch. Items of one run always share a batch: ``run_length=1``
    gives fully random batches at one read per item.
    """

    def __init__(self, rows: int | Sequence[int] | np.ndarray, batch_size: int, run_length: int = 1,
                 shuffle: bool = False, drop_last: bool = False, seed: int = 0):
        if batch_size < 1 or run_length < 1:
            raise ValueError(f"batch_size and run_length must be >= 1 (got {batch_size}, {run_length})")
        self.rows = np.arange(rows) if isinstance(rows, (int, np.integer)) else np.asarray(rows, dtype=np.int64)
        self.batch_size, self.run_length = int(batch_size), int(run_length)
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch`` for the next pass (as ``DistributedSampler``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        full, rest = divmod(len(self.rows), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[list[int]]:
        rows = self.rows
        if self.shuffle:
            rng = np.random.default_rng((self.seed, self.epoch))
            # runs follow the archive's chunk grid (not the order of ``rows``) so each run is one decompression
            chunk = rows // self.run_length
            breaks = np.flatnonzero(np.diff(chunk) != 0) + 1 if len(rows) else np.empty(0, dtype=np.int64)
            runs = np.split(rows, breaks) if len(rows) else []
            rows = np.concatenate([runs[k] for k in rng.permutation(len(runs))]) if runs else rows
        self.epoch += 1
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            if self.shuffle:
                batch = batch[rng.permutation(len(batch))]
            yield batch.tolist()


def _cat(batches: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in batches[0].items():
        if key == "params":
            out[key] = [torch.cat([b["params"][k] for b in batches]) for k in range(len(value))]
        elif isinstance(value, list):
            out[key] = [v for b in batches for v in b[key]]
        else:
            out[key] = torch.cat([b[key] for b in batches])
    return out


def _take(batch: dict[str, Any], sel: slice | torch.Tensor) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key == "params":
            out[key] = [p[sel] for p in value]
        elif isinstance(value, list):
            out[key] = value[sel] if isinstance(sel, slice) else [value[int(k)] for k in sel.tolist()]
        else:
            out[key] = value[sel]
    return out


def open_archive(path: str | Path, device: torch.device | str = "cpu", in_memory: bool = False) -> InrArchive:
    """Open an izoo archive as a torch ``Dataset`` of INRs (``izoo.archive.open``)."""
    return InrArchive(path, device=device, in_memory=in_memory)
