"""PSNR report tables (per shard, class, phase; failures), per-class plots, and the dataset summary (Table 1).

Inputs are what the workflow already has: the per-phase PSNR report CSVs of the fitting jobs, the merged
archives (final per-item PSNR, phase, iterations), the manifest and the fit jobs' Snakemake benchmark
files (wall-clock seconds of every fitting job, from which device-hours are summed).
PSNR is measured on de-normalised [0, 1] pixels (2D) or on held-out views (3D).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd

from izoo.archive.layout import PHASES, decode_attrs, read_items
from izoo.atomic import atomic_path
from izoo.config import DatasetConfig, dataset_config
from izoo.datasets.manifest import SHARDS_FILE, load_shards_info
from izoo.errors import IzooError
from izoo.fitting import psnr_report
from izoo.recipes import DEFAULT_RECIPE

PSNR_NOTE = {
    "siren": "PSNR in dB on de-normalised [0, 1] pixels",
    "nerf": "PSNR in dB on held-out views (white background)",
}
def read_archive_items(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, dict, int]:
    """Final per-item table of every archive, the first archive's attributes (plus ``params_per_item``), total bytes."""
    frames, attrs, size = [], {}, 0
    for path in paths:
        path = Path(path)
        try:
            with h5py.File(path, "r") as h5:
                frames.append(read_items(h5))
                if not attrs:
                    attrs = decode_attrs(h5.attrs)
                    attrs["params_per_item"] = int(sum(np.prod(ds.shape[1:]) for ds in h5["params"].values()))
        except (OSError, KeyError) as exc:
            raise IzooError(f"archive unreadable ({type(exc).__name__}: {exc})", path,
                            "delete it and rerun `snakemake` (the merge job rebuilds it)") from exc
        size += path.stat().st_size
    items = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return items, attrs, size


def read_fit_seconds(paths: Iterable[str | Path]) -> float:
    """Total wall-clock seconds of the fitting jobs, from Snakemake ``benchmark:`` TSV files."""
    total = 0.0
    for path in paths:
        try:
            total += float(pd.read_csv(path, sep="\t")["s"].sum())
        except (OSError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise IzooError(f"job benchmark file unreadable ({type(exc).__name__})", path,
                            "delete it and rerun the job that writes it") from exc
    return total


def _stats(psnr: pd.Series) -> dict:
    return {"n": int(psnr.size), "mean_psnr": float(psnr.mean()) if psnr.size else math.nan,
            "std_psnr": float(psnr.std(ddof=0)) if psnr.size else math.nan,
            "min_psnr": float(psnr.min()) if psnr.size else math.nan,
            "max_psnr": float(psnr.max()) if psnr.size else math.nan}


def table_by_shard(reports: pd.DataFrame, final: pd.DataFrame) -> pd.DataFrame:
    """Per basic shard: items, final PSNR stats, items passing after basic, items refined later."""
    basic = reports[reports["phase"] == "basic"]
    merged = basic[["index", "shard", "passed"]].merge(final[["index", "psnr"]], on="index", how="left")
    rows = []
    for shard, grp in merged.groupby("shard", sort=True):
        rows.append({"shard": shard, **_stats(grp["psnr"]),
                     "passed_after_basic": int(grp["passed"].sum()),
                     "refined": int((~grp["passed"].astype(bool)).sum())})
    return pd.DataFrame(rows)


def table_by_class(final: pd.DataFrame, class_names: dict[int, str]) -> pd.DataFrame:
    """Per class: final PSNR stats and the share of items over the gate."""
    rows = []
    for label, grp in final.groupby("label", sort=True):
        rows.append({"label": int(label), "class": class_names.get(int(label), str(label)), **_stats(grp["psnr"]),
                     "share_passing": float(grp["passed"].mean())})
    return pd.DataFrame(rows)


def table_by_phase(reports: pd.DataFrame, n_items: int) -> pd.DataFrame:
    """Per phase: items trained, mean PSNR before/after, passes, and the share of ALL items over the gate after it."""
    rows, failing = [], None
    for phase in PHASES:
        grp = reports[reports["phase"] == phase]
        if phase == "basic":
            failing = set(grp.loc[~grp["passed"].astype(bool), "index"])
        elif failing is not None:
            failing -= set(grp.loc[grp["passed"].astype(bool), "index"])
        rows.append({
            "phase": phase,
            "items_trained": int(len(grp)),
            "mean_psnr_before": float(grp["psnr_before"].mean()) if len(grp) else math.nan,
            "mean_psnr_after": float(grp["psnr_after"].mean()) if len(grp) else math.nan,
            "passed_in_phase": int(grp["passed"].astype(bool).sum()),
            "iterations": int(grp["iterations"].sum()),
            "item_seconds": float(grp["seconds"].sum()),
            "share_passing_after": (1.0 - len(failing) / n_items) if n_items and failing is not None else math.nan,
        })
    return pd.DataFrame(rows)


def failures_table(final: pd.DataFrame, gate: float) -> pd.DataFrame:
    """Items still below the gate after every phase — kept in the archive, listed here, never dropped."""
    fail = final.loc[~final["passed"].astype(bool),
                     ["index", "item_id", "split", "label", "psnr", "phase", "iterations"]].copy()
    fail["reason"] = [f"PSNR {p:.2f} dB < gate {gate:.2f} dB after phase {ph}" for p, ph in zip(fail["psnr"], fail["phase"])]
    return fail


def write_table(frame: pd.DataFrame, csv_path: Path, md_path: Path | None = None, title: str = "", note: str = "") -> None:
    """Write a table as CSV and (optionally) Markdown with a title and a note line, atomically."""
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False)
    if md_path is not None:
        body = frame.to_markdown(index=False, floatfmt=".2f") if len(frame) else "_(no rows)_"
        text = (f"## {title}\n\n" if title else "") + (f"{note}\n\n" if note else "") + body + "\n"
        with atomic_path(md_path) as tmp:
            tmp.write_text(text)


def plot_by_class(by_class: pd.DataFrame, gate: float, path: Path, title: str) -> None:
    """Bar chart of mean ± std PSNR per class with the gate drawn, like the paper's Fig. 9–11."""
    import matplotlib

    matplotlib.use("Agg")  # headless: cluster nodes have no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(by_class) + 1.5), 3.2), dpi=120)
    x = np.arange(len(by_class))
    ax.bar(x, by_class["mean_psnr"], yerr=by_class["std_psnr"], color="#4C72B0", capsize=2)
    ax.axhline(gate, color="#C44E52", linestyle="--", linewidth=1, label=f"gate {gate:g} dB")
    ax.set_xticks(x, by_class["class"], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def build_report(dataset: str, dataset_cfg: DatasetConfig | Mapping[str, Any], manifest: Path, archives: Sequence[Path], reports: Sequence[Path],
                 fit_benchmarks: Sequence[Path], out_dir: Path) -> dict:
    """Write every report table of one dataset into ``out_dir`` and return its summary row."""
    out_dir = Path(out_dir)
    dataset_cfg = dataset_config(dataset_cfg)
    gate = float(dataset_cfg.fit.gate_psnr)
    family = dataset_cfg.model.family
    note = PSNR_NOTE[family] + f"; quality gate {gate:g} dB."
    shards_json = Path(manifest).with_name(SHARDS_FILE)
    class_names = {}
    if shards_json.exists():
        class_names = {int(k): v for k, v in load_shards_info(shards_json).get("classes", {}).items()}

    final, attrs, archive_bytes = read_archive_items(archives)
    phase_reports = psnr_report.read_all(reports)
    final = final.sort_values("index").reset_index(drop=True)
    final.insert(4, "class_name", [class_names.get(int(lab), str(lab)) for lab in final["label"]])
    n = len(final)

    by_shard = table_by_shard(phase_reports, final)
    by_class = table_by_class(final, class_names)
    by_phase = table_by_phase(phase_reports, n)
    failures = failures_table(final, gate)

    write_table(final, out_dir / "items.csv")
    write_table(failures, out_dir / "failures.csv", out_dir / "failures.md", f"{dataset}: items below the gate", note)
    write_table(by_shard, out_dir / "psnr_by_shard.csv", out_dir / "psnr_by_shard.md", f"{dataset}: PSNR per shard", note)
    write_table(by_class, out_dir / "psnr_by_class.csv", out_dir / "psnr_by_class.md", f"{dataset}: PSNR per class", note)
    write_table(by_phase, out_dir / "psnr_by_phase.csv", out_dir / "psnr_by_phase.md",
                f"{dataset}: quality-control phases", note + " share_passing_after counts all items of the dataset.")
    plot_by_class(by_class, gate, out_dir / "psnr_by_class.png", f"{dataset}: PSNR per class (n={n})")

    fit_seconds = read_fit_seconds(fit_benchmarks)
    summary = {
        "dataset": dataset,
        "items": n,
        "splits": {s: int(c) for s, c in final["split"].value_counts().sort_index().items()},
        "model": f"{family.upper()} {dataset_cfg.model.depth}/{dataset_cfg.model.width}",
        "params_per_item": attrs.get("params_per_item") if attrs else None,
        "device": attrs.get("device", "unknown") if attrs else "unknown",
        "fit_jobs": len(fit_benchmarks),
        "fit_hours": fit_seconds / 3600.0,
        "seconds_per_item": fit_seconds / n if n else math.nan,
        "archive_bytes": int(archive_bytes),
        "mean_psnr": float(final["psnr"].mean()) if n else math.nan,
        "std_psnr": float(final["psnr"].std(ddof=0)) if n else math.nan,
        "min_psnr": float(final["psnr"].min()) if n else math.nan,
        "gate_psnr": gate,
        # the paper trains until the gate is met; izoo caps that phase, and Table 1 says where
        "until_threshold_cap": dataset_cfg.fit.until_threshold.cap_iterations,
        "recipe": dataset_cfg.recipe or DEFAULT_RECIPE,   # NeRF datasets have no recipe key: the paper's settings
        "failures": int(len(failures)),
        **{f"share_passing_after_{row.phase}": row.share_passing_after for row in by_phase.itertuples()},
        "psnr_note": note,
    }
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=float) + "\n")
    return summary


SCENE_FILTER_FILES = ("kept_scenes.csv", "dropped_scenes.csv")


def scene_counts(summary_path: Path, scene_filters: Sequence[Path]) -> dict:
    """Kept / dropped scene counts of a 3D dataset from the scene-filter tables beside its summary.json (none: {})."""
    found = {p.name: p for p in map(Path, scene_filters) if p.parent.resolve() == summary_path.parent.resolve()}
    if not found:
        return {}
    counts = {}
    for name, key in zip(SCENE_FILTER_FILES, ("scenes_kept", "scenes_dropped")):
        if name not in found:
            raise IzooError(f"scene filter table {name} missing beside {found[next(iter(found))].name}",
                            summary_path.parent / name, "pass both kept_scenes.csv and dropped_scenes.csv")
        try:
            counts[key] = int(len(pd.read_csv(found[name])))
        except (OSError, pd.errors.ParserError) as exc:
            raise IzooError(f"scene filter table unreadable ({type(exc).__name__})", found[name],
                            "rerun the filter_scenes rule") from exc
        except pd.errors.EmptyDataError:
            counts[key] = 0
    return counts


def _scenes_cell(r: dict) -> str:
    if "scenes_kept" not in r:
        return ""
    return f"{r['scenes_kept'] + r['scenes_dropped']:,} → {r['scenes_kept']:,} kept ({r['scenes_dropped']:,} dropped)"


def summary_table(rows: Sequence[dict]) -> pd.DataFrame:
    """The paper's Table 1 from per-dataset summary rows."""
    return pd.DataFrame([{
        "dataset": r["dataset"],
        "recipe": r.get("recipe", DEFAULT_RECIPE),   # summary.json files written before recipes existed
        "items": r["items"],
        "scenes kept": _scenes_cell(r),
        "model (depth/width)": r["model"],
        "params/item": r["params_per_item"],
        "device": r["device"],
        "fit device-hours": r["fit_hours"],
        "s/item": r["seconds_per_item"],
        "archive MB": r["archive_bytes"] / 1e6,
        "mean PSNR (dB)": r["mean_psnr"],
        "gate (dB)": r["gate_psnr"],
        "passing after basic": r.get("share_passing_after_basic"),
        "after extended": r.get("share_passing_after_extended"),
        "after until-threshold": r.get("share_passing_after_until_threshold"),
        "until-threshold cap (it)": r.get("until_threshold_cap"),
        "failures": r["failures"],
    } for r in rows])


def write_summary(inputs: Sequence[Path], out_md: Path, out_csv: Path, scene_filters: Sequence[Path] = ()) -> str:
    """Gather per-dataset summaries (and 3D scene-filter tables) into ``summary.md``/``.csv``; returns the Markdown."""
    rows = []
    for path in inputs:
        try:
            rows.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise IzooError(f"dataset summary unreadable ({type(exc).__name__})", path, "rerun its report job") from exc
        rows[-1].update(scene_counts(Path(path), scene_filters))
    table = summary_table(rows)
    note = ("Fit device-hours are the summed wall-clock time of the fitting jobs (one device each), "
            "measured by Snakemake; PSNR as noted per dataset in its reports. Recipe: the dataset's fitting recipe. "
            "Scenes kept: 3D scenes left in the benchmark split by the scene filter (below the gate or in a class "
            "with too few scenes: dropped; see reports/dropped_scenes.csv). Until-threshold cap: the most "
            "iterations that phase gives an item (the paper trains until the gate, without a stated cap).")
    write_table(table, Path(out_csv), Path(out_md), "izoo dataset summary (cf. Implicit-Zoo Table 1)", note)
    return Path(out_md).read_text()


def _cmd_report(args: argparse.Namespace) -> int:
    cfg = DatasetConfig.parse(json.loads(args.dataset_config))
    summary = build_report(args.dataset, cfg, Path(args.manifest), [Path(p) for p in args.archives],
                           [Path(p) for p in args.reports], [Path(p) for p in args.fit_benchmarks], Path(args.out_dir))
    print(f"izoo report: {args.dataset}: {summary['items']} items, mean PSNR {summary['mean_psnr']:.2f} dB, "
          f"{summary['failures']} below the gate; tables in {args.out_dir}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    text = write_summary([Path(p) for p in args.inputs], Path(args.out_md), Path(args.out_csv),
                         [Path(p) for p in args.scene_filters])
    print(text)
    print(f"(written to {os.path.abspath(args.out_md)} and {os.path.abspath(args.out_csv)})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``izoo report`` and ``izoo summary``."""
    p = sub.add_parser("report", help="PSNR report tables, plots and the summary row of one dataset")
    p.add_argument("--dataset", required=True)
    p.add_argument("--dataset-config", required=True, help="the dataset's config section as JSON")
    p.add_argument("--manifest", required=True)
    p.add_argument("--archives", nargs="+", required=True)
    p.add_argument("--reports", nargs="*", default=[], help="PSNR report CSVs of every phase")
    p.add_argument("--fit-benchmarks", nargs="*", default=[], help="Snakemake benchmark TSVs of the fitting jobs")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=_cmd_report)

    s = sub.add_parser("summary", help="the dataset summary table (the paper's Table 1)")
    s.add_argument("--inputs", nargs="+", required=True, help="per-dataset summary.json files")
    s.add_argument("--scene-filters", nargs="*", default=[],
                   help="3D datasets' kept_scenes.csv and dropped_scenes.csv (matched to the summary.json beside them)")
    s.add_argument("--out-md", required=True)
    s.add_argument("--out-csv", required=True)
    s.set_defaults(func=_cmd_summary)
