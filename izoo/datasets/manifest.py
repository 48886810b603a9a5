"""The shard manifest: every item of a dataset, in a stable order, assigned to a fitting shard.

``manifest.csv`` (``index, split, item_id, label, source_id, shard``), ``shards.json`` and ``bad_items.csv`` are
written atomically (``manifest.csv`` last) and byte-identically for the same config, so reruns keep shard ids.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pandas as pd

from izoo.atomic import atomic_path
from izoo.errors import IzooError

if TYPE_CHECKING:
    from izoo.datasets.base import BadItem

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.csv"
SHARDS_FILE = "shards.json"
BAD_ITEMS_FILE = "bad_items.csv"
COLUMNS = ["index", "split", "item_id", "label", "source_id", "shard"]
BAD_COLUMNS = ["split", "item_id", "source_id", "error"]
_DTYPES = {"index": "int64", "split": str, "item_id": str, "label": "int64", "source_id": str, "shard": str}


@dataclass
class ManifestInfo:
    """What ``build_manifest`` wrote: paths, per-split counts, shards, bad items and class names."""

    dataset: str
    format: str
    shard_size: int
    manifest_path: Path
    shards_path: Path
    bad_items_path: Path
    splits: dict[str, int]
    shards: dict[str, dict[str, Any]]
    bad_items: list[dict[str, str]] = field(default_factory=list)
    classes: dict[int, str] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        """Items in the manifest over all splits."""
        return sum(self.splits.values())


def shard_id(split: str, k: int) -> str:
    """The id of the k-th shard of ``split``."""
    return f"{split}-{k:05d}"


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically unless the file already holds exactly it (keeps mtimes stable on reruns)."""
    if path.is_file() and path.read_bytes() == data:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


def build_manifest(dataset_name: str, source_cfg: Mapping[str, Any], shard_size: int, out_dir: str | Path,
                   workers: int = 8) -> ManifestInfo:
    """List and validate a source dataset, assign items to shards of ``shard_size``, write the manifest files."""
    shard_size = int(shard_size)
    if shard_size < 1:
        raise IzooError(f"shard_size must be >= 1, got {shard_size}", None, "fix the dataset's shard_size")
    out_dir = Path(out_dir)
    started = time.perf_counter()
    # imported here: the Snakefile reads shards.json through this module in snakemake's own process, which then
    # need not load the readers and torch (seconds of start-up on every snakemake call and in every cluster job)
    from izoo.datasets.registry import open_source

    source = open_source(source_cfg)
    rows: list[tuple[int, str, str, int, str, str]] = []
    bad_items: list[BadItem] = []
    split_counts: dict[str, int] = {}
    shards: dict[str, dict[str, Any]] = {}
    for split in source.splits():
        good, bad = source.scan(split, workers=workers)
        bad_items.extend(bad)
        split_counts[split] = len(good)
        for k, ref in enumerate(good):
            sid = shard_id(split, k // shard_size)
            shards.setdefault(sid, {"split": split, "n": 0})["n"] += 1
            rows.append((len(rows), split, ref.item_id, int(ref.label), ref.source_id, sid))
    classes = {int(k): v for k, v in source.classes().items()}

    manifest_bytes = csv_bytes(COLUMNS, rows)
    bad_bytes = csv_bytes(BAD_COLUMNS, [tuple(b.as_dict()[c] for c in BAD_COLUMNS) for b in bad_items])
    shards_doc = {
        "dataset": dataset_name,
        "format": source.format,
        "shard_size": shard_size,
        "splits": split_counts,
        "shards": shards,
        "bad_items": [b.as_dict() for b in bad_items],
        "classes": {str(k): v for k, v in classes.items()},
        "source": dict(source_cfg),
    }
    shards_bytes = (json.dumps(shards_doc, indent=2, default=str) + "\n").encode()
    paths = out_dir / MANIFEST_FILE, out_dir / SHARDS_FILE, out_dir / BAD_ITEMS_FILE
    # manifest.csv goes last: its presence means the whole manifest is complete
    _write_if_changed(paths[2], bad_bytes)
    _write_if_changed(paths[1], shards_bytes)
    _write_if_changed(paths[0], manifest_bytes)
    log.info("manifest %s: %d items in %d shards (%s), %d bad items, %.1f s", dataset_name, len(rows), len(shards),
             ", ".join(f"{s}={n}" for s, n in split_counts.items()), len(bad_items), time.perf_counter() - started)
    return ManifestInfo(dataset=dataset_name, format=source.format, shard_size=shard_size, manifest_path=paths[0],
                        shards_path=paths[1], bad_items_path=paths[2], splits=split_counts, shards=shards,
                        bad_items=[b.as_dict() for b in bad_items], classes=classes)


def csv_bytes(columns: Sequence[str], rows: Sequence[tuple]) -> bytes:
    """CSV with a fixed dialect (``\\n`` line ends, minimal quoting) so identical rows give identical bytes."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _manifest_path(path: str | Path) -> Path:
    path = Path(path)
    return path / MANIFEST_FILE if path.is_dir() else path


def load_manifest(path: str | Path) -> pd.DataFrame:
    """The manifest (``manifest.csv`` or the folder holding it) as a DataFrame in index order."""
    path = _manifest_path(path)
    if not path.is_file():
        raise IzooError("manifest not found", path, "run `izoo manifest` (or the workflow's manifest rule) first")
    try:
        df = pd.read_csv(path, dtype=_DTYPES, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise IzooError(f"unreadable manifest ({type(exc).__name__}: {exc})", path, "delete it and rebuild") from None
    if list(df.columns) != COLUMNS:
        raise IzooError(f"manifest columns are {list(df.columns)}, expected {COLUMNS}", path, "delete it and rebuild")
    return df


def load_shards_info(path: str | Path) -> dict[str, Any]:
    """``shards.json`` (the file or the folder holding it) as a dict."""
    path = Path(path)
    path = path / SHARDS_FILE if path.is_dir() else path
    if not path.is_file():
        raise IzooError("shards.json not found", path, "run `izoo manifest` first")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IzooError(f"unreadable shards.json ({type(exc).__name__}: {exc})", path, "delete the manifest folder and rebuild") from None


def shard_ids(manifest_df: pd.DataFrame) -> list[str]:
    """Shard ids in manifest order."""
    return list(dict.fromkeys(manifest_df["shard"].tolist()))


def shard_rows(manifest_df: pd.DataFrame, shard: str) -> pd.DataFrame:
    """The manifest rows of one shard, in index order."""
    rows = manifest_df[manifest_df["shard"] == shard]
    if rows.empty:
        raise IzooError(f"no shard {shard!r} in the manifest (it has {len(shard_ids(manifest_df))} shards)", None,
                        "use a shard id from shards.json; rebuild the workflow if the manifest changed")
    return rows.sort_values("index").reset_index(drop=True)
