"""Classification results: the paper's Table 2 (mean ± std over seeds) as CSV and Markdown, and the token figure.

``classification_table(runs)`` turns run JSONs (one per tokenizer and seed, from ``izoo bench-classify``)
into one row per tokenizer, plus a last row showing what no learning scores on the same test split (the
majority class of the train split, predicted for every item); ``plot_token_groups(run, out_png)`` draws the learned query coordinates
coloured by token, next to their starting grid (like the paper's Fig. 6).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from izoo.atomic import atomic_path
from izoo.benchmarks.tables import mean_std, seed_references
from izoo.benchmarks.tokenizers import DISPLAY_NAMES, TOKENIZERS
from izoo.errors import IzooError

METRICS = ("accuracy", "precision", "f1")
#: the ``tokenizer`` value of the no-learning reference row
REFERENCE = "reference"


def classification_table(runs: list[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per tokenizer (paper order): seeds, mean and std (sample std, 0 for one seed) of each metric, in %."""
    frame = pd.DataFrame([{"tokenizer": r["tokenizer"], "seed": r["seed"],
                           **{m: 100.0 * float(r[m]) for m in METRICS},
                           "params": r.get("params"),
                           "epochs": r.get("epochs_run", (r.get("settings") or {}).get("epochs")),
                           "train_items": r.get("train_items"), "test_items": r.get("test_items"),
                           "seconds": r.get("seconds")} for r in runs])
    duplicated = frame[frame.duplicated(["tokenizer", "seed"], keep=False)]
    if len(duplicated):
        raise IzooError(f"two results for the same (tokenizer, seed): {duplicated[['tokenizer', 'seed']].values.tolist()}",
                        None, "pass each run once")
    rows = []
    order = [t for t in TOKENIZERS if t in set(frame.tokenizer)] + sorted(set(frame.tokenizer) - set(TOKENIZERS))
    for tok in order:
        group = frame[frame.tokenizer == tok]
        row: dict[str, Any] = {"tokenizer": tok, "method": DISPLAY_NAMES.get(tok, tok), "seeds": len(group),
                               "seed_list": " ".join(str(s) for s in sorted(group.seed))}
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"], _ = mean_std(group[metric].tolist())
        row["params"] = group["params"].iloc[0]
        row["epochs"] = group["epochs"].iloc[0]
        row["train_items"] = group["train_items"].iloc[0]
        row["test_items"] = group["test_items"].iloc[0]
        row["seconds_mean"] = float(group["seconds"].astype(float).mean())
        rows.append(row)
    references = seed_references(runs)
    if references:
        row = {"tokenizer": REFERENCE, "method": f"no learning ({references[0]['rule']})",
               "seeds": len(references), "seed_list": ""}
        for metric in METRICS:
            values = np.array([100.0 * float(ref[metric]) for ref in references])
            row[f"{metric}_mean"], row[f"{metric}_std"] = float(values.mean()), float(values.std())
        row.update(params=0, epochs=0, train_items=rows[-1]["train_items"], test_items=rows[-1]["test_items"],
                   seconds_mean=0.0)
        rows.append(row)
    return pd.DataFrame(rows)


def table_markdown(table: pd.DataFrame) -> str:
    """The table as Markdown: method, seeds, accuracy / precision / F1 as ``mean ± std`` (%)."""
    lines = ["| method | seeds | accuracy (%) | precision (%) | F1 (%) | params | epochs | train / test items |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        cells = [f"{getattr(row, m + '_mean'):.2f} ± {getattr(row, m + '_std'):.2f}" for m in METRICS]
        trained = row.tokenizer != REFERENCE
        lines.append(f"| {row.method} | {row.seeds if trained else '–'} | {' | '.join(cells)} | "
                     f"{f'{int(row.params):,}' if trained else '–'} | {row.epochs if trained else '–'} | "
                     f"{row.train_items} / {row.test_items} |")
    return "\n".join(lines) + "\n"


def plot_token_groups(run: Mapping[str, Any], out_png: str | Path) -> Path:
    """Scatter the initial and learned query coordinates of a run, coloured by token (the paper's Fig. 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coords = run["token_coordinates"]
    patch = int(coords["patch"])
    panels = [("initial", np.asarray(coords["initial"], dtype=float)), ("learned", np.asarray(coords["learned"], dtype=float))]
    height, width = panels[0][1].shape[:2]
    token = (np.arange(height)[:, None] // patch) * (width // patch) + np.arange(width)[None, :] // patch
    # neighbouring tokens get far-apart colours so groups stay tell-apart-able
    colours = plt.get_cmap("tab20")(((token * 7) % 20) / 19.0)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    for axis, (title, xy) in zip(axes, panels):
        axis.scatter(xy[..., 0].ravel(), xy[..., 1].ravel(), c=colours.reshape(-1, 4), s=max(1.0, 9000.0 / (height * width)),
                     linewidths=0)
        axis.set_xlim(-1.05, 1.05)
        axis.set_ylim(1.05, -1.05)  # image convention: y grows downwards
        axis.set_aspect("equal")
        axis.set_title(f"{title} query coordinates")
        axis.add_patch(plt.Rectangle((-1, -1), 2, 2, fill=False, lw=0.6, color="grey"))
    name = run.get("tokenizer", "?")
    fig.suptitle(f"{name} tokenizer, seed {run.get('seed')}: colour = token ({patch}×{patch} group), "
                 f"test acc {100 * float(run.get('accuracy', float('nan'))):.2f} %")
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return out_png
