"""``izoo import implicit-zoo`` and ``izoo export`` sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path


def _import_main(args: argparse.Namespace) -> int:
    """``izoo import implicit-zoo``: released run folders → archive + manifest + bad-item list."""
    from izoo.interop.implicit_zoo import describe, import_implicit_zoo

    source_cfg = None
    if args.dataset_config:
        from izoo.fitting.commands import parse_dataset_config  # the workflow's one convention for --dataset-config

        entry = parse_dataset_config(args.dataset_config)
        source_cfg = entry.get("source", entry)
    result = import_implicit_zoo(args.roots, args.out, args.split, dataset=args.dataset, source_cfg=source_cfg,
                                 seed=args.seed, on_bad_item=args.on_bad_item, gate_psnr=args.gate_psnr, w0=args.w0,
                                 manifest_out=args.manifest_out, bad_items_out=args.bad_items, device=args.device)
    print(describe(result))
    return 0


def _export_main(args: argparse.Namespace) -> int:
    """``izoo export``: archive → state-dict folder or fit-a-nef HDF5, with the conventions beside it."""
    from izoo.interop.export import NATIVE_CONVENTION, export_archive

    result = export_archive(args.archive, args.out, args.format, convention=args.convention,
                            resolution=tuple(args.resolution) if args.resolution else None)
    print(f"{result.out_dir}: {result.n_items} SIRENs as {result.format} ({len(result.files)} files, coordinates "
          f"{result.convention}; conventions.json and README.md beside them)")
    native = NATIVE_CONVENTION[args.format]
    if result.convention != native:
        print(f"{result.out_dir}: note: {args.format} code decodes on {native}; these weights decode on "
              f"{result.convention} (pass --convention {native} --resolution H W to convert them exactly)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``import`` and ``export`` to the ``izoo`` parser."""
    imp = subparsers.add_parser("import", help="turn INRs released in another layout into an izoo archive")
    formats = imp.add_subparsers(dest="import_format", required=True, metavar="FORMAT")
    zoo = formats.add_parser(
        "implicit-zoo", help="the paper's released checkpoints (ckpts/{label}/{index}_{seed}.ckpt + {start}_{end}.json)",
        description="Import released Implicit-Zoo SIRENs (weights kept bit for bit, coordinate_convention "
                    "linspace_endpoints). With --dataset-config izoo re-measures every PSNR against the source images; "
                    "the released PSNR is kept in /extras/released_psnr either way.")
    zoo.add_argument("roots", nargs="+", type=Path,
                     help="generator output folders (each with ckpts/ and {start}_{end}.json), or folders of them")
    zoo.add_argument("--out", required=True, type=Path, help="archive to write (atomically), e.g. .../train.h5")
    zoo.add_argument("--split", required=True, help="split the checkpoints were fitted on (train, test)")
    zoo.add_argument("--dataset", default=None, help="dataset name stored in the archive")
    zoo.add_argument("--dataset-config", default=None,
                     help="the dataset's config entry (or its source: section) as JSON/@file: the source images to "
                          "match items to (label checked) and re-measure PSNR on")
    zoo.add_argument("--seed", type=int, default=None, help="import only checkpoints of this seed (several per image)")
    zoo.add_argument("--on-bad-item", default="error", choices=("error", "skip"),
                     help="skip: import the rest and list bad files in the bad-items CSV")
    zoo.add_argument("--gate-psnr", type=float, default=30.0, help="quality gate in dB (the released generator's 30)")
    zoo.add_argument("--w0", type=float, default=30.0, help="sine frequency of the released SIRENs (30)")
    zoo.add_argument("--manifest-out", type=Path, default=None, help="default: OUT's folder, {stem}.manifest.csv")
    zoo.add_argument("--bad-items", type=Path, default=None, help="default: OUT's folder, {stem}.bad_items.csv")
    zoo.add_argument("--device", default="cpu", help="torch device for re-measuring PSNR")
    zoo.set_defaults(func=_import_main)

    from izoo.interop.export import FORMATS
    from izoo.siren.model import COORDINATE_CONVENTIONS

    exp = subparsers.add_parser("export", help="write an archive's SIRENs as state dicts or fit-a-nef HDF5",
                                description="Export a SIREN archive for weight-space learning code, with "
                                            "conventions.json/README.md describing how to decode the weights.")
    exp.add_argument("archive", type=Path)
    exp.add_argument("--format", required=True, choices=FORMATS)
    exp.add_argument("--out", required=True, type=Path, help="output folder")
    exp.add_argument("--convention", default=None, choices=sorted(COORDINATE_CONVENTIONS),
                     help="coordinate grid the exported weights decode on (default: the archive's own)")
    exp.add_argument("--resolution", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), default=None,
                     help="image size the conversion is exact at (needed with --convention)")
    exp.set_defaults(func=_export_main)
