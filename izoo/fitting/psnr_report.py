"""The PSNR report CSV a fitting job writes beside its weights file (``results/{ds}/fit/{phase}/{job}.csv``).

One row per item the job fitted, in the job's (manifest) order, columns ``COLUMNS``: ``psnr_before`` is the PSNR the
item came into the phase with (basic phase: of its initialisation; from a Meta-SGD learned init, after the init's
learned-lr steps), ``psnr_after`` the one it left with, ``iterations`` and
``seconds`` this phase's cost, ``passed`` whether it reached the quality gate. Readers: the refinement planner
(``izoo.fitting.refine``), the report tables (``izoo.reports``) and the 3D scene filter (``izoo.nerf.filtering``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from izoo.atomic import atomic_path
from izoo.errors import IzooError

COLUMNS = ["index", "item_id", "split", "label", "shard", "phase", "psnr_before", "psnr_after",
           "iterations", "seconds", "passed"]


def write(report: pd.DataFrame, path: str | Path) -> Path:
    """Write ``report``'s ``COLUMNS`` (in that order) as the CSV at ``path``, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        report[COLUMNS].to_csv(tmp, index=False)
    return path


def read(path: str | Path, columns: Sequence[str] = COLUMNS) -> pd.DataFrame:
    """One report; a missing or unreadable file, or one without ``columns``, is a one-line ``IzooError``."""
    path = Path(path)
    if not path.is_file():
        raise IzooError("PSNR report is missing", path, "rerun the fitting job that writes it")
    try:
        report = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise IzooError(f"PSNR report is unreadable ({type(exc).__name__})", path,
                        "delete it and rerun the fitting job that writes it") from exc
    missing = [c for c in columns if c not in report.columns]
    if missing:
        raise IzooError(f"PSNR report lacks columns {missing}", path, "rerun the fitting job that writes it")
    if "passed" in report.columns:
        report["passed"] = _as_bool(report["passed"])
    return report


def read_all(paths: Iterable[str | Path], columns: Sequence[str] = COLUMNS) -> pd.DataFrame:
    """The reports at ``paths`` (any phases) concatenated, ``columns`` only; no paths: an empty table."""
    frames = [read(path, columns)[list(columns)] for path in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(columns))


def _as_bool(values: pd.Series) -> pd.Series:
    """``passed`` as booleans whether pandas read it as bool or as text."""
    if values.dtype == bool:
        return values
    return values.astype(str).str.strip().str.lower().isin(["true", "1", "yes"])
