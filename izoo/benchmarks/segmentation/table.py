"""The paper's Table 3 from segmentation run results: one row per tokenizer, mIoU mean ± std over seeds."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from izoo.benchmarks.segmentation.settings import SEG_TOKENIZERS
from izoo.benchmarks.tables import format_mean_std, markdown_table, mean_std, seed_references
from izoo.benchmarks.tokenizers import DISPLAY_NAMES


def segmentation_table(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The paper's Table 3 from run records: one row per tokenizer, mIoU mean ± std over seeds (in %)."""
    rows = []
    order = {k: i for i, k in enumerate(SEG_TOKENIZERS)}
    for tok in sorted({r["tokenizer"] for r in runs}, key=lambda t: order.get(t, 99)):
        group = [r for r in runs if r["tokenizer"] == tok]
        fine = mean_std([r.get("miou_fine") for r in group], 100)
        coarse = mean_std([r.get("miou_coarse") for r in group], 100)
        rows.append({
            "method": f"SegFormer-B0 ({group[0]['settings']['encoder']})" + ("" if tok == "uniform" else
                                                                               f" + {DISPLAY_NAMES[tok]}"),
            "tokenizer": tok,
            "seeds": len(group),
            "params_m": float(np.mean([r["params_m"] for r in group])),
            "gflops": float(np.mean([r["gflops_paper_convention"] for r in group])),
            "gflops_network": float(np.mean([r["gflops_network"] for r in group])),
            "gflops_with_query": float(np.mean([r["gflops_with_query"] for r in group])),
            "miou_fine_mean": fine[0], "miou_fine_std": fine[1],
            "miou_coarse_mean": coarse[0], "miou_coarse_std": coarse[1],
            "miou_fine": format_mean_std(*fine), "miou_coarse": format_mean_std(*coarse),
            "resolution": f"{group[0]['settings']['height']}×{group[0]['settings']['width']}",
            "steps": group[0]["settings"]["steps"],
        })
    references = seed_references(runs)
    if references:
        fine = mean_std([r.get("miou_fine") for r in references], 100)
        coarse = mean_std([r.get("miou_coarse") for r in references], 100)
        rows.append({"method": f"no learning ({references[0]['rule']})", "tokenizer": "reference",
                     "seeds": len(references), "params_m": 0.0, "gflops": 0.0, "gflops_network": 0.0,
                     "gflops_with_query": 0.0, "miou_fine_mean": fine[0], "miou_fine_std": fine[1],
                     "miou_coarse_mean": coarse[0], "miou_coarse_std": coarse[1],
                     "miou_fine": format_mean_std(*fine), "miou_coarse": format_mean_std(*coarse),
                     "resolution": rows[-1]["resolution"] if rows else "", "steps": 0})
    return pd.DataFrame(rows)


def segmentation_markdown(table: pd.DataFrame) -> str:
    """Table 3 as markdown: method, params, GFLOPs (both conventions), mIoU fine and coarse, seeds, and its note."""
    res = table["resolution"].iloc[0] if len(table) else "?"
    steps = table["steps"].iloc[0] if len(table) else "?"
    return markdown_table(
        table, {"method": "Method", "params_m": "Params (M)", "gflops": "GFLOPs", "gflops_network": "GFLOPs (network)",
                "miou_fine": "mIoU fine ↑ (%)", "miou_coarse": "mIoU coarse ↑ (%)", "seeds": "seeds"},
        "Cityscapes-INR segmentation (the paper's Table 3)",
        f"Input {res}, {steps} steps; mean ± std over seeds. GFLOPs: one forward pass, counted by torch's "
        "FlopCounterMode; the INR query is included for learnable tokenizers only (the paper's convention; the "
        "network-only column excludes it). Paper (320×640, 40k steps): 39.95 / 40.33 (LC) / 40.61 (LP+reg).")
