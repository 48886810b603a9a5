"""Archive I/O benchmark: merge throughput (copy and virtual) and read throughput (random items, batches).

Writes synthetic shard files in the real layout (SIREN weights = a shared init plus per-item noise, which
compresses like fitted weights: barely), with a share of items overridden by refinement job files, then
times ``merge_split``, the reader's access paths (the iterable ``loader`` and the ``torch.utils.data.DataLoader`` of
``dataloader``, in-process and with worker processes) and ``verify``. Prints a markdown table.

    python benchmarks/archive_io.py --items 4000 --depth 3 --width 64     # CIFAR-10 INRs (18 KB/item)
    python benchmarks/archive_io.py --items 1000 --depth 4 --width 256    # ImageNet INRs (528 KB/item)
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import timed
import izoo.archive
from izoo.archive import layout
from izoo.archive.merge import merge_split
from izoo.archive.verify import verify_archive
from izoo.siren import model as siren


def write_shards(root: Path, spec: siren.SirenSpec, n_items: int, shard_size: int, refined_share: float,
                 seed: int) -> tuple[Path, list[Path], list[Path]]:
    """Synthetic manifest, basic shard files and refinement job files (refined items spread over the split)."""
    rng = np.random.default_rng(seed)
    shards = [f"train-{k:05d}" for k in range((n_items + shard_size - 1) // shard_size)]
    manifest = pd.DataFrame({"index": np.arange(n_items), "split": "train",
                             "item_id": [f"img{i:07d}" for i in range(n_items)], "label": np.arange(n_items) % 10,
                             "source_id": [f"src/{i}.png" for i in range(n_items)],
                             "shard": [shards[i // shard_size] for i in range(n_items)]})
    manifest_path = root / "manifest.csv"
    manifest.to_csv(manifest_path, index=False)
    base = [p[0].numpy() for p in siren.init_params(spec, [42])]
    names = [f"layer{k // 2}.{'weight' if k % 2 == 0 else 'bias'}" for k in range(2 * spec.depth)]
    attrs = layout.base_attrs("siren", spec.to_dict(), gate_psnr=30.0, dataset="bench")

    def write(path: Path, indices: np.ndarray, phase: str) -> Path:
        params = {n: (b[None] + rng.normal(0, 0.02, (len(indices), *b.shape))).astype(np.float32)
                  for n, b in zip(names, base)}
        rows = manifest.iloc[indices]
        psnr = rng.normal(32, 2, len(indices)).astype(np.float32)
        items = rows[["index", "item_id", "source_id", "split", "label"]].assign(
            psnr=psnr, phase=phase, iterations=1000, seconds=8.5, passed=psnr >= 30.0)
        return layout.write_inr_file(path, params, items, {**attrs, "phase": phase})

    basic = [write(root / "fit" / "basic" / f"{s}.h5", np.arange(k * shard_size, min(n_items, (k + 1) * shard_size)),
                   "basic") for k, s in enumerate(shards)]
    picked = np.sort(rng.choice(n_items, size=int(n_items * refined_share), replace=False))
    half = len(picked) // 2
    refined = [write(root / "fit" / "extended" / "job-0000.h5", picked, "extended"),
               write(root / "fit" / "until_threshold" / "job-0000.h5", picked[:half], "until_threshold")]
    return manifest_path, basic, refined


def main() -> None:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--refined-share", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--random-items", type=int, default=500, help="single items read in random order")
    parser.add_argument("--repeat", type=int, default=3, help="read timings are the best of this many runs")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp folder)")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2],
                        help="DataLoader worker counts to time (each epoch starts its workers afresh)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = siren.SirenSpec(depth=args.depth, width=args.width)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        manifest, basic, refined = write_shards(root, spec, args.items, args.shard_size, args.refined_share, 0)
        merge_kw = dict(manifest=manifest, split="train", shards=basic, refined=refined, dataset="bench")
        t_merge, result = timed(lambda: merge_split(out=root / "archive" / "train.h5", **merge_kw))
        t_virtual, vresult = timed(lambda: merge_split(out=root / "archive" / "train-virtual.h5", virtual=True,
                                                       **merge_kw))
        mb = result.param_bytes / 1e6
        per_item_mb = mb / args.items
        rows: list[tuple[str, str, str, str]] = []

        def add(what: str, seconds: float, items: int) -> None:
            rows.append((what, f"{seconds:.2f}", f"{items / seconds:,.0f}", f"{items * per_item_mb / seconds:,.1f}"))

        add(f"merge (copy, {layout.CODEC_NAME})", t_merge, args.items)
        add("merge (--virtual)", t_virtual, args.items)
        # each timed run opens the archive afresh: HDF5's chunk cache starts empty (the OS page cache is warm)
        path, vpath = result.path, vresult.path
        order = np.random.default_rng(1).choice(args.items, size=min(args.random_items, args.items), replace=False)

        def single_items() -> None:
            arch = izoo.archive.open(path)
            for i in order:
                arch[int(i)]

        def random_batches() -> None:
            arch = izoo.archive.open(path)
            for a in range(0, len(order), args.batch_size):
                arch.params_batch(np.sort(order[a:a + args.batch_size]))

        def loader(archive_path: Path, shuffle: bool) -> int:
            return sum(1 for _ in izoo.archive.open(archive_path).loader(batch_size=args.batch_size, shuffle=shuffle))

        t, _ = timed(single_items, args.repeat)
        add(f"random single items (`arch[i]`, {len(order)})", t, len(order))
        t, _ = timed(random_batches, args.repeat)
        add(f"random-index batches (`params_batch`, {args.batch_size})", t, len(order))
        t, _ = timed(lambda: loader(path, False), args.repeat)
        add(f"loader, sequential ({args.batch_size})", t, args.items)
        t, _ = timed(lambda: loader(path, True), args.repeat)
        add(f"loader, shuffled pools ({args.batch_size})", t, args.items)
        def dataloader(archive_path: Path, shuffle: bool, workers: int) -> int:
            arch = izoo.archive.open(archive_path)
            return sum(1 for _ in arch.dataloader(batch_size=args.batch_size, shuffle=shuffle, num_workers=workers))

        run = izoo.archive.open(path).run_length()
        for workers in args.workers:
            t, _ = timed(lambda: dataloader(path, False, workers), args.repeat)
            add(f"DataLoader, sequential ({args.batch_size}, {workers} workers)", t, args.items)
            t, _ = timed(lambda: dataloader(path, True, workers), args.repeat)
            add(f"DataLoader, shuffled runs of {run} ({args.batch_size}, {workers} workers)", t, args.items)
        t, _ = timed(lambda: izoo.archive.open(path, in_memory=True), args.repeat)
        add("in_memory load", t, args.items)
        t, _ = timed(lambda: loader(vpath, True), args.repeat)
        add(f"virtual archive loader, shuffled ({args.batch_size})", t, args.items)
        t, report = timed(lambda: verify_archive(result.path, manifest=manifest, sample=16))
        add("verify (structure, manifest, NaN scan, 16 renders)", t, args.items)
        assert report.ok, report.problems

    print(f"SIREN {args.depth}/{args.width} ({spec.n_params():,} params, {per_item_mb * 1e3:.1f} KB/item), "
          f"{args.items} items in {len(basic)} shards, {args.refined_share:.0%} refined; archive "
          f"{result.bytes_on_disk / 1e6:.1f} MB on disk for {mb:.1f} MB of weights "
          f"(virtual: {vresult.bytes_on_disk / 1e6:.2f} MB); {platform.processor() or platform.machine()}, "
          f"torch threads 1; reads: best of {args.repeat}, each from a fresh open\n")
    print("| operation | seconds | items/s | MB/s (weights) |\n|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
