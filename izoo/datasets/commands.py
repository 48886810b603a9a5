"""``izoo manifest`` and ``izoo demo-data``."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from izoo.errors import IzooError
from izoo.jsonargs import load_json_object

log = logging.getLogger(__name__)


def _read_dataset_config(value: str) -> dict[str, Any]:
    """A dataset config from a JSON string or a JSON/YAML file path."""
    return load_json_object(value, "--dataset-config", "one entry of config.yaml's datasets:")


def split_dataset_config(cfg: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """(source config, shard size) from a dataset config section (or a bare source config)."""
    source = cfg.get("source", cfg if "format" in cfg else None)
    if not isinstance(source, dict):
        raise IzooError("dataset config has no source: section with a format", None,
                        "give the dataset a source: {format, root, splits} section")
    shard_size = cfg.get("shard_size", source.get("shard_size"))
    return {k: v for k, v in source.items() if k != "shard_size"}, None if shard_size is None else int(shard_size)


def cmd_manifest(args: argparse.Namespace) -> int:
    """Build ``manifest.csv``/``shards.json``/``bad_items.csv`` for one dataset."""
    from izoo.datasets.manifest import build_manifest

    source, shard_size = split_dataset_config(_read_dataset_config(args.dataset_config))
    shard_size = args.shard_size or shard_size
    if shard_size is None:
        raise IzooError("no shard_size in the dataset config", None, "set the dataset's shard_size or pass --shard-size")
    started = time.perf_counter()
    info = build_manifest(args.dataset, source, shard_size, args.out_dir, workers=args.workers)
    print(f"{info.manifest_path}: {info.n_items} items, {len(info.shards)} shards, {len(info.bad_items)} bad items "
          f"({time.perf_counter() - started:.1f} s)")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    """Generate the embedded demo datasets."""
    from izoo.datasets.demo import make_demo_data

    started = time.perf_counter()
    kinds = ["all"] if args.kind == "all" else [args.kind]
    paths = make_demo_data(args.out, seed=args.seed, kinds=kinds, n_per_class=args.n_per_class)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    log.info("demo data ready in %.1f s", time.perf_counter() - started)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``manifest`` and ``demo-data`` to the ``izoo`` command line."""
    p = subparsers.add_parser("manifest", help="list a source dataset and assign its items to fitting shards")
    p.add_argument("--dataset", required=True, help="dataset name (recorded in shards.json)")
    p.add_argument("--dataset-config", required=True,
                   help="the dataset's config section (with source: and shard_size) as JSON, or a JSON/YAML file")
    p.add_argument("--out-dir", required=True, help="folder for manifest.csv, shards.json, bad_items.csv")
    p.add_argument("--shard-size", type=int, default=None, help="items per shard (overrides the config)")
    p.add_argument("--workers", type=int, default=8, help="threads validating item files")
    p.set_defaults(func=cmd_manifest)

    d = subparsers.add_parser("demo-data", help="generate the small embedded demo datasets (no download)")
    d.add_argument("--out", required=True, help="output folder, e.g. data/demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--kind", choices=["all", "cifar10", "cityscapes", "scenes"], default="all")
    d.add_argument("--n-per-class", type=int, default=30,
                   help="CIFAR-format training images per class (plus a fifth as many test images; "
                        "5000 gives a CIFAR-10-sized 50,000/10,000 set)")
    d.set_defaults(func=cmd_demo_data)
