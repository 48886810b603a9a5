"""How long does Snakemake take to build the DAG over an ImageNet-1K-sized manifest (1,431,167 items)?

Writes a generated manifest (no images) for a dataset ``imagenet1k`` into a scratch copy of the workflow,
then times ``snakemake -n datasets`` (a dry run) with the shipped shard size, side by side with the same
dry run on a CIFAR-10-sized manifest (60,000 items). Prints jobs in the DAG and seconds for each.

    python benchmarks/dag_scale.py [--items 1431167] [--shard-size 2048]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def write_manifest(out_dir: Path, dataset: str, n_items: int, shard_size: int, splits: dict[str, float]) -> int:
    """Write ``manifest.csv``, ``shards.json`` and an empty ``bad_items.csv`` for ``n_items`` synthetic items; returns the shard count."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, shards, split_counts, start = [], {}, {}, 0
    names = list(splits)
    counts = [int(n_items * splits[s]) for s in names]
    counts[0] += n_items - sum(counts)
    for split, n in zip(names, counts):
        idx = np.arange(start, start + n)
        shard_no = (idx - start) // shard_size
        shard_ids = np.char.add(f"{split}-", np.char.zfill(shard_no.astype(str), 5))
        rows.append(pd.DataFrame({"index": idx, "split": split, "item_id": np.char.add(f"{split}/", idx.astype(str)),
                                  "label": idx % 1000, "source_id": np.char.add("img_", idx.astype(str)),
                                  "shard": shard_ids}))
        for k in range(int(shard_no.max()) + 1 if n else 0):
            shards[f"{split}-{k:05d}"] = {"split": split, "n": int(min(shard_size, n - k * shard_size))}
        split_counts[split] = n
        start += n
    pd.concat(rows).to_csv(out_dir / "manifest.csv", index=False)
    (out_dir / "bad_items.csv").write_text("split,item_id,source_id,error\n")
    (out_dir / "shards.json").write_text(json.dumps({"dataset": dataset, "shard_size": shard_size, "splits": split_counts,
                                                     "shards": shards, "bad_items": [], "classes": {}}))
    return len(shards)


def dry_run(work: Path, dataset: str, n_items: int, shard_size: int) -> tuple[int, float, int]:
    """Time ``snakemake -n datasets`` over a generated manifest; returns (shards, seconds, jobs in the DAG)."""
    for name in ("Snakefile", "workflow", "config.yaml", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    overlay = work / "overlay.yaml"
    overlay.write_text(
        "datasets:\n"
        "  cifar10: {enabled: false}\n"
        f"  {dataset}:\n"
        "    enabled: true\n"
        "    source: {format: imagenet, root: /nonexistent, splits: [train, val]}\n"
        "    model: {family: siren, depth: 4, width: 256}\n"
        f"    shard_size: {shard_size}\n"
        "benchmarks:\n  cifar10_classification: {enabled: false}\n"
    )
    n_shards = write_manifest(work / "results" / dataset, dataset, n_items, shard_size, {"train": 0.965, "val": 0.035})
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(overlay),
           "--rerun-triggers", "code", "input", "params", "software-env", "--", "datasets"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"dry run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    match = re.search(r"^total\s+(\d+)", out.stdout, flags=re.M)
    return n_shards, seconds, int(match.group(1)) if match else -1


def main() -> None:
    """Run both dry runs side by side and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_431_167)
    ap.add_argument("--shard-size", type=int, default=2048)
    args = ap.parse_args()
    print(f"{'manifest':>22} {'items':>10} {'shards':>7} {'DAG jobs':>9} {'dry run s':>10}")
    for label, n in (("CIFAR-10-sized", 60_000), ("ImageNet-1K-sized", args.items)):
        with tempfile.TemporaryDirectory() as tmp:
            shards, seconds, jobs = dry_run(Path(tmp), "imagenet1k", n, args.shard_size)
        print(f"{label:>22} {n:>10,} {shards:>7} {jobs:>9} {seconds:>10.1f}")


if __name__ == "__main__":
    main()
