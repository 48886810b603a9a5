"""``izoo merge``, ``izoo verify`` and ``izoo inspect`` sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from izoo.archive.merge import merge_main
from izoo.atomic import atomic_path
from izoo.jsonargs import load_json_object


def _verify_main(args: argparse.Namespace) -> int:
    """``izoo verify``: print what was checked, one line per problem and the fix; exit 1 when there is any.

    ``--out`` gets the same report, written (atomically) only when the archive passed.
    """
    from izoo.archive.verify import verify_archive

    source_cfg = None
    if args.dataset_config:
        # only the source: section is read, so the entry's fitting recipe is not resolved (that is izoo.fitting's)
        source_cfg = load_json_object(args.dataset_config, "--dataset-config",
                                      "one entry of config.yaml's datasets:").get("source")
    report = verify_archive(args.archive, manifest=args.manifest, sample=args.sample, tolerance=args.tolerance,
                            seed=args.seed, source_cfg=source_cfg, device=args.device)
    text = "\n".join(report.lines()) + "\n"
    print(text, end="")
    if report.ok and args.out is not None:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text)
    return 0 if report.ok else 1


def _inspect_main(args: argparse.Namespace) -> int:
    """``izoo inspect``: print the summary table."""
    from izoo.archive.verify import inspect_archive

    print(inspect_archive(args.archive))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the archive sub-commands to the ``izoo`` parser."""
    merge = subparsers.add_parser("merge", help="merge shard INR files into one archive per split",
                                  description="Merge a split's basic shard files and refinement job files into one "
                                              "HDF5 archive in manifest order (each item from the last phase that ran it).")
    merge.add_argument("--dataset", required=True, help="dataset name (stored as an attribute)")
    merge.add_argument("--manifest", required=True, type=Path, help="results/NAME/manifest.csv")
    merge.add_argument("--split", required=True, help="split to merge (train, test, ...)")
    merge.add_argument("--shards", required=True, nargs="+", type=Path, help="the split's basic shard files")
    merge.add_argument("--refined", nargs="*", default=[], type=Path,
                       help="refinement job files, extended first then until_threshold (later files win)")
    merge.add_argument("--out", required=True, type=Path, help="archive path (written atomically)")
    merge.add_argument("--virtual", action="store_true",
                       help="build HDF5 virtual datasets over the shard files instead of copying the weights")
    merge.set_defaults(func=merge_main)

    verify = subparsers.add_parser("verify", help="check an archive (structure, counts, NaN/Inf, re-rendered PSNR)")
    verify.add_argument("archive", type=Path)
    verify.add_argument("--manifest", type=Path, default=None, help="compare counts/ids/labels with this manifest")
    verify.add_argument("--dataset-config", default=None,
                        help="the dataset's config entry as JSON (or @file.json): its source: section lets verify "
                             "re-render sampled items against their source images")
    verify.add_argument("--sample", type=int, default=16, help="items to re-render (0: none)")
    verify.add_argument("--tolerance", type=float, default=0.1, help="allowed |stored - re-rendered| PSNR in dB")
    verify.add_argument("--seed", type=int, default=0, help="seed of the item sample")
    verify.add_argument("--device", default="cpu", help="torch device for rendering")
    verify.add_argument("--out", type=Path, default=None,
                        help="also write the report to this file, only when the archive passed (the workflow's "
                             "{split}.verified.txt)")
    verify.set_defaults(func=_verify_main)

    inspect = subparsers.add_parser("inspect", help="print an archive's summary (items, classes, PSNR, size)")
    inspect.add_argument("archive", type=Path)
    inspect.set_defaults(func=_inspect_main)
