"""Atomic file writes: write to a temporary sibling, then rename, so no reader ever sees half a file."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

from izoo.errors import IzooError

log = logging.getLogger(__name__)


#: safety margin on top of a write's estimated size (HDF5 metadata, filesystem blocks): 64 KiB + 5 %
FREE_SPACE_MARGIN = 64 << 10


def _disk_full(path: Path) -> IzooError:
    return IzooError("no space left on device while writing", path,
                     "free disk space (or point results/work at a larger filesystem) and rerun; finished files are kept")


def is_disk_full(exc: BaseException) -> bool:
    """Whether an exception is a full disk: ``OSError`` ENOSPC, or HDF5's error text (h5py raises RuntimeError)."""
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc)


def ensure_free_space(path: str | Path, needed_bytes: int) -> None:
    """Raise a one-line ``IzooError`` before writing ``path`` when its filesystem lacks ``needed_bytes`` (+ margin).

    HDF5 cannot recover from a write that fails half-way on a full disk (h5py leaves broken handles behind),
    so writers check first instead of relying on the error alone.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    needed = int(needed_bytes * 1.05) + FREE_SPACE_MARGIN
    if free < needed:
        raise IzooError(f"not enough disk space: writing needs about {needed / 1e6:.1f} MB, "
                        f"{free / 1e6:.1f} MB free", path,
                        "free disk space (or point results/work at a larger filesystem) and rerun; finished files are kept")


def _temp_path(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.tmp-{pid}")


def remove_stale_temps(path: str | Path) -> None:
    """Delete temporaries of ``path`` left by killed writers (their process is gone); a live writer's is kept."""
    path = Path(path)
    for tmp in path.parent.glob(_temp_path(path, 0).name[:-1] + "*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        log.warning("deleting %s left by a write that was killed", tmp)
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure delete it.

    A full disk (ENOSPC) becomes a one-line ``IzooError`` naming the file; nothing already written is touched.
    A temporary of ``path`` left by a killed writer is deleted first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = _temp_path(path, os.getpid())
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise _disk_full(path) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
