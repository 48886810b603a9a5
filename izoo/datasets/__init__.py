"""Source datasets in their official layouts: readers, the shard manifest, and embedded demo data."""

from izoo.datasets.base import BadItem, ItemRef, Sample, Scene, SourceDataset
from izoo.datasets.manifest import ManifestInfo, build_manifest, load_manifest, shard_ids, shard_rows
from izoo.datasets.registry import READERS, open_source

__all__ = [
    "BadItem", "ItemRef", "Sample", "Scene", "SourceDataset", "READERS", "open_source",
    "ManifestInfo", "build_manifest", "load_manifest", "shard_ids", "shard_rows",
]
