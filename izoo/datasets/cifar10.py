"""CIFAR-10, official python version: ``cifar-10-batches-py/`` with pickled ``data_batch_1..5``, ``test_batch``, ``batches.meta``."""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from izoo.datasets.base import BadItem, ItemRef, Sample, SourceDataset
from izoo.errors import BadItemError, IzooError

PYTHON_DIR = "cifar-10-batches-py"
SPLIT_BATCHES = {"train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"]}
META_FILE = "batches.meta"
IMAGE_SIZE = 32
ROW_LENGTH = 3 * IMAGE_SIZE * IMAGE_SIZE
EXPECTED = ("the CIFAR-10 python version: a cifar-10-batches-py/ directory with data_batch_1..5, test_batch "
            "and batches.meta (extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html)")

#: the only globals a CIFAR pickle may reference; anything else is refused rather than executed
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Loads CIFAR batches without executing arbitrary code: only numpy array reconstruction is allowed."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in pickle")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "_codecs":
            import _codecs
            return _codecs.encode
        return getattr(np, name)


def _unpickle(path: Path) -> Any:
    """Unpickle a CIFAR file the way the dataset's authors document it (``encoding='bytes'``)."""
    with open(path, "rb") as fh:
        return _CifarUnpickler(fh, encoding="bytes").load()


def _get(obj: Mapping, key: str) -> Any:
    """A dict entry by byte key (official python-2 pickles) or str key (re-pickled under python 3)."""
    if key.encode() in obj:
        return obj[key.encode()]
    return obj[key]


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class CifarBatch:
    """One unpickled, checked batch file."""

    data: np.ndarray  # [N, 3072] uint8, channel-planar (1024 R, 1024 G, 1024 B), rows in raster order
    labels: np.ndarray  # [N] int64
    filenames: list[str]


@functools.lru_cache(maxsize=8)
def _load_batch_cached(path_str: str, mtime_ns: int, size: int) -> CifarBatch:
    # keyed on mtime and size so a replaced file is re-read; a shard loads hundreds of items from one batch
    path = Path(path_str)
    try:
        obj = _unpickle(path)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            MemoryError, OverflowError, ImportError, KeyError) as exc:
        raise BadItemError(f"corrupt or truncated pickle ({type(exc).__name__}: {exc})", path,
                           "re-extract cifar-10-python.tar.gz, or set source.on_bad_item: skip") from None
    if not isinstance(obj, Mapping):
        raise BadItemError(f"pickle holds a {type(obj).__name__}, expected a dict with b'data' and b'labels'", path,
                           f"use {EXPECTED}")
    try:
        data = _get(obj, "data")
        labels = _get(obj, "labels")
    except KeyError as exc:
        raise BadItemError(f"pickle has no {exc.args[0]!r} entry (keys: {sorted(map(_text, obj))})", path,
                           f"use {EXPECTED}") from None
    filenames_raw = obj.get(b"filenames", obj.get("filenames"))
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_LENGTH:
        raise BadItemError(f"images of unexpected size: b'data' is {data.dtype} {list(data.shape)}, expected uint8 "
                           f"[N, {ROW_LENGTH}] (3x32x32 channel-planar)", path, f"use {EXPECTED}")
    labels_arr = np.asarray(labels)
    if labels_arr.ndim != 1 or len(labels_arr) != len(data) or not np.issubdtype(labels_arr.dtype, np.integer):
        raise BadItemError(f"b'labels' has {labels_arr.shape} {labels_arr.dtype} entries for {len(data)} images", path,
                           f"use {EXPECTED}")
    if filenames_raw is None or len(filenames_raw) != len(data):
        filenames = [f"{path.name}_{row:05d}.png" for row in range(len(data))]
    else:
        filenames = [_text(name) for name in filenames_raw]
    return CifarBatch(data=data, labels=labels_arr.astype(np.int64), filenames=filenames)


def load_batch(path: Path) -> CifarBatch:
    """Unpickle and check one CIFAR batch file (cached: repeated calls cost nothing)."""
    if not path.is_file():
        raise IzooError("CIFAR-10 batch file is missing", path, f"use {EXPECTED}")
    stat = path.stat()
    return _load_batch_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def find_python_dir(root: Path) -> Path:
    """The ``cifar-10-batches-py`` directory at or under ``root``; other CIFAR layouts get a clear error."""
    for candidate in (root, root / PYTHON_DIR):
        if (candidate / META_FILE).is_file() or (candidate / "data_batch_1").is_file():
            return candidate
    for candidate in (root, root / "cifar-10-batches-bin"):
        if (candidate / "data_batch_1.bin").is_file() or (candidate / "batches.meta.txt").is_file():
            raise IzooError("this is the CIFAR-10 binary version (data_batch_*.bin); izoo reads the python version",
                            candidate, f"use {EXPECTED}")
    for candidate in (root, root / "cifar-10-batches-mat"):
        if (candidate / "data_batch_1.mat").is_file() or (candidate / "batches.meta.mat").is_file():
            raise IzooError("this is the CIFAR-10 MATLAB version (data_batch_*.mat); izoo reads the python version",
                            candidate, f"use {EXPECTED}")
    if (root / "cifar-10-python.tar.gz").is_file():
        raise IzooError("the CIFAR-10 archive is not extracted", root / "cifar-10-python.tar.gz",
                        f"run `tar xzf cifar-10-python.tar.gz` in {root}")
    raise IzooError("not a CIFAR-10 directory (no batches.meta or data_batch_1)", root, f"use {EXPECTED}")


class Cifar10Source(SourceDataset):
    """CIFAR-10 python version: item ``data_batch_K_RRRRR`` (batch file, row), 32x32 RGB images, labels 0..9."""

    format = "cifar10"
    layout = EXPECTED
    default_splits = ("train", "test")

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.dir = find_python_dir(self.root)
        for split in self._splits:
            if split not in SPLIT_BATCHES:
                raise IzooError(f"CIFAR-10 has no split {split!r} (it has {list(SPLIT_BATCHES)})", self.dir,
                                "set source.splits to [train, test] or a subset")
        self._names = self._read_meta()

    def _read_meta(self) -> list[str]:
        path = self.dir / META_FILE
        if not path.is_file():
            raise IzooError("batches.meta is missing", path, f"use {EXPECTED}")
        try:
            meta = _unpickle(path)
            names = [_text(n) for n in _get(meta, "label_names")]
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise IzooError(f"corrupt batches.meta ({type(exc).__name__}: {exc})", path,
                            "re-extract cifar-10-python.tar.gz") from None
        if not names:
            raise IzooError("batches.meta lists no label_names", path, "re-extract cifar-10-python.tar.gz")
        return names

    def item_path(self, source_id: str) -> Path:
        """The batch file of ``data_batch_K#row``."""
        return self.dir / source_id.split("#")[0]

    def classes(self) -> dict[int, str]:
        """Label → class name from ``batches.meta``."""
        return dict(enumerate(self._names))

    def _list(self, split: str) -> Iterable[ItemRef | BadItem]:
        for batch_name in SPLIT_BATCHES[split]:
            path = self.dir / batch_name
            try:
                batch = load_batch(path)
            except BadItemError as exc:
                # a whole batch file is unreadable: with skip it is one bad entry standing for all its items
                yield BadItem(split, batch_name, batch_name, exc.what)
                continue
            bad_rows = np.flatnonzero((batch.labels < 0) | (batch.labels >= len(self._names)))
            bad_set = set(bad_rows.tolist())
            for row in range(len(batch.data)):
                item_id = f"{batch_name}_{row:05d}"
                source_id = f"{batch_name}#{row}"
                if row in bad_set:
                    yield BadItem(split, item_id, source_id,
                                  f"label {int(batch.labels[row])} out of range 0..{len(self._names) - 1} (row {row})")
                else:
                    yield ItemRef(item_id, split, int(batch.labels[row]), source_id)

    #: listing already checks every array and label of the (in-memory) pickles
    checks_items = False

    def _check(self, ref: ItemRef, full: bool) -> None:
        return None

    def _locate(self, ref: ItemRef) -> tuple[Path, int]:
        batch_name, _, row = ref.source_id.partition("#")
        if batch_name not in SPLIT_BATCHES.get(ref.split, []) or not row.isdigit():
            raise IzooError(f"not a CIFAR-10 source id: {ref.source_id!r} (expected e.g. data_batch_1#17)", self.dir,
                            "rebuild the manifest")
        return self.dir / batch_name, int(row)

    def _load(self, ref: ItemRef) -> Sample:
        path, row = self._locate(ref)
        batch = load_batch(path)
        if row >= len(batch.data):
            raise BadItemError(f"row {row} out of range (batch has {len(batch.data)} images)", path,
                               "rebuild the manifest")
        label = int(batch.labels[row])
        if not 0 <= label < len(self._names):
            raise BadItemError(f"label {label} out of range 0..{len(self._names) - 1} (row {row})", path,
                               "set source.on_bad_item: skip and rebuild the manifest")
        pixels = batch.data[row].reshape(3, IMAGE_SIZE, IMAGE_SIZE)
        image = torch.from_numpy(pixels.astype(np.float32) / np.float32(255.0))
        return Sample(item_id=ref.item_id, label=label, image=image)
