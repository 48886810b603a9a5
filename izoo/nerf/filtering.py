"""The 3D dataset filter (SPEC §2): scenes below the gate leave the benchmark split, then classes with fewer
than ``min_per_class`` remaining scenes are dropped; every dropped scene is listed with its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from izoo.archive.layout import PHASES
from izoo.errors import IzooError

PHASE_ORDER = {phase: order for order, phase in enumerate(PHASES)}
REASON_BELOW_GATE = "below_gate"
REASON_SMALL_CLASS = "small_class"


def final_rows(report: pd.DataFrame) -> pd.DataFrame:
    """One row per scene: the row of the last phase that trained it (reports of all phases may be concatenated)."""
    df = report.copy()
    if "phase" in df.columns:
        df["_order"] = df["phase"].map(PHASE_ORDER).fillna(-1)
        df = df.sort_values("_order", kind="stable").drop(columns="_order")
    key = "item_id" if "split" not in df.columns else ["split", "item_id"]
    df = df.drop_duplicates(subset=key, keep="last")
    sort_key = "index" if "index" in df.columns else "item_id"
    return df.sort_values(sort_key, kind="stable").reset_index(drop=True)


def _psnr_column(df: pd.DataFrame) -> str:
    for name in ("psnr_after", "psnr"):
        if name in df.columns:
            return name
    raise IzooError("PSNR report has neither a psnr_after nor a psnr column", None,
                    "pass the per-phase PSNR reports written by izoo fit")


def filter_scenes(report_df: pd.DataFrame, gate: float = 25.0, min_per_class: int = 5,
                  class_column: str = "label") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a PSNR report into kept scenes and dropped scenes (with ``reason_code`` and a readable ``reason``)."""
    for col in ("item_id", class_column):
        if col not in report_df.columns:
            raise IzooError(f"PSNR report lacks the {col!r} column", None, "pass the PSNR reports written by izoo fit")
    df = final_rows(report_df)
    psnr_col = _psnr_column(df)
    psnr = pd.to_numeric(df[psnr_col], errors="coerce")
    below = ~(psnr >= gate)  # NaN PSNR (never evaluated) counts as below the gate
    passing = df[~below]
    counts = passing.groupby(class_column)[class_column].transform("size") if len(passing) else pd.Series(dtype=int)
    small = pd.Series(False, index=df.index)
    small.loc[passing.index] = counts < min_per_class
    class_sizes = passing.groupby(class_column).size()

    dropped = df[below | small].copy()
    dropped["reason_code"] = [REASON_BELOW_GATE if below[i] else REASON_SMALL_CLASS for i in dropped.index]
    def class_text(i: int) -> str:
        name = df.at[i, "class_name"] if "class_name" in df.columns and class_column != "class_name" else None
        return f"class {df.at[i, class_column]}" + (f" ({name})" if name is not None else "")

    dropped["reason"] = [
        f"PSNR {psnr[i]:.2f} dB is below the {gate:g} dB gate" if below[i]
        else (f"{class_text(i)} keeps only {int(class_sizes.get(df.at[i, class_column], 0))} "
              f"scene(s) at or above {gate:g} dB, fewer than {min_per_class}")
        for i in dropped.index]
    kept = df[~(below | small)].copy()
    return kept.reset_index(drop=True), dropped.reset_index(drop=True)


def read_reports(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate PSNR report CSVs (any phases); a missing or unreadable file is a one-line error."""
    frames = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise IzooError("PSNR report is missing", path, "run the fitting rules that write it, or fix --reports")
        try:
            frames.append(pd.read_csv(path))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise IzooError(f"PSNR report is not a readable CSV ({type(exc).__name__})", path,
                            "delete it and rerun the job that writes it") from exc
    if not frames:
        raise IzooError("no PSNR reports given", None, "pass --reports with at least one CSV")
    return pd.concat(frames, ignore_index=True)
