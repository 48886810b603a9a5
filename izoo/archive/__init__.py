"""HDF5 files of INRs: per-shard weight files written by fitting jobs, and merged per-split archives.

``izoo.archive.open(path, device="cpu", in_memory=False)`` → ``InrArchive`` (a torch ``Dataset``); see
``izoo.archive.reader`` for the reading API, ``merge`` for ``merge_split`` and ``verify`` for ``izoo verify``.

Layers, each importing only those before it: ``layout`` (the file layout) → ``checks`` (what the attributes
mean, structure checks) and ``families`` (the registry model families fill with how their files read and
render) → ``reader`` and ``merge`` → ``verify`` → ``commands``. Of the model families it imports only
``izoo.siren.model``, which sits below it (SIREN specs and coordinate conventions); the rest register themselves.
"""

from __future__ import annotations

from typing import Any

__all__ = ["InrArchive", "open"]


def __getattr__(name: str) -> Any:
    # lazy, so `import izoo.archive.layout` (fitting jobs) does not pull in the torch-side reader
    if name in ("open", "InrArchive"):
        from izoo.archive import reader

        return reader.open_archive if name == "open" else reader.InrArchive
    raise AttributeError(f"module 'izoo.archive' has no attribute {name!r}")
