"""Table helpers every benchmark shares: mean ± std cells over seeds, the no-learning reference of each seed,
a generic markdown table and the atomic CSV/markdown writer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from izoo.atomic import atomic_path


def seed_references(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The no-learning ``reference`` of each seed once: runs of one seed share their split, so their references agree."""
    by_seed = {r.get("seed"): r["reference"] for r in runs if r.get("reference")}
    return [by_seed[seed] for seed in sorted(by_seed, key=str)]


def mean_std(values: Sequence[float | None], scale: float = 1.0) -> tuple[float, float, int]:
    """Mean, sample std (0 for one value) and count of the finite values, each times ``scale``."""
    vals = [v * scale for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return math.nan, math.nan, 0
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def format_mean_std(mean: float, std: float, n: int) -> str:
    """``mean ± std`` with 2 decimals (just the mean for one seed, an en dash for none)."""
    if n == 0:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def markdown_table(table: pd.DataFrame, columns: Mapping[str, str], title: str, note: str) -> str:
    """A markdown table of ``columns`` (key → header) with a title and a note line."""
    header = "| " + " | ".join(columns.values()) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [f"### {title}", "", header, sep]
    for _, row in table.iterrows():
        cells = []
        for key in columns:
            value = row[key]
            cells.append(f"{value:.2f}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", note, ""])


def write_table(table: pd.DataFrame, markdown: str, out_csv: str | Path | None, out_md: str | Path | None,
                float_format: str | None = None) -> None:
    """Write a table's CSV and/or markdown atomically (a path left out is not written)."""
    if out_csv:
        with atomic_path(Path(out_csv)) as tmp:
            table.to_csv(tmp, index=False, float_format=float_format)
    if out_md:
        with atomic_path(Path(out_md)) as tmp:
            tmp.write_text(markdown)
