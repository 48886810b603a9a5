"""One error type whose message is a single line naming the file and the fix."""

from __future__ import annotations

from pathlib import Path


class IzooError(Exception):
    """A user-facing error: one line, naming what is wrong, where, and how to fix it."""

    def __init__(self, what: str, path: str | Path | None = None, fix: str | None = None):
        self.what = what
        self.path = None if path is None else str(path)
        self.fix = fix
        parts = [f"{self.path}: {what}" if self.path else what]
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__(" — ".join(parts))


class BadItemError(IzooError):
    """One source item (image, label, scene) is unreadable or invalid; may be skipped with on_bad_item: skip."""
