"""``open_source(source_cfg)``: the reader for a dataset's ``source:`` config section, chosen by ``format``."""

from __future__ import annotations

from typing import Any, Mapping

from izoo.datasets.base import SourceDataset
from izoo.datasets.cifar10 import Cifar10Source
from izoo.datasets.cityscapes import CityscapesSource
from izoo.datasets.folder import FolderSource
from izoo.datasets.imagenet import ImageNetSource
from izoo.datasets.scenes import ScenesSource
from izoo.errors import IzooError

#: source format name -> reader class
READERS: dict[str, type[SourceDataset]] = {
    "cifar10": Cifar10Source,
    "imagenet": ImageNetSource,
    "cityscapes": CityscapesSource,
    "scenes": ScenesSource,
    "folder": FolderSource,
}


def open_source(source_cfg: Mapping[str, Any]) -> SourceDataset:
    """The reader for a dataset's ``source:`` config section (``format``, ``root``, ``splits``, ...)."""
    if not isinstance(source_cfg, Mapping):
        raise IzooError(f"source config must be a mapping, got {type(source_cfg).__name__}", None,
                        "give the dataset a source: section with format and root")
    fmt = source_cfg.get("format")
    if fmt not in READERS:
        raise IzooError(f"unknown source format {fmt!r} (known: {', '.join(READERS)})", None,
                        "set source.format to one of the known formats")
    return READERS[str(fmt)](source_cfg)
