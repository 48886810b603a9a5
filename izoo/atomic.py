"""Atomic file writes: write to a temporary sibling, then rename, so no reader ever sees half a file."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from izoo.errors import IzooError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure delete it.

    A full disk (ENOSPC) becomes a one-line ``IzooError`` naming the file; nothing already written is touched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise IzooError("no space left on device while writing", path,
                            "free disk space (or point results/work at a larger filesystem) and rerun; finished files are kept") from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
