"""Every ``izoo bench-*`` command (MAE's ``main_*``): one run per (task, tokenizer, seed), one table per task.

A run command trains one model and writes its result through ``izoo.benchmarks.results``; a table command reads
those results back and writes the task's table. Heavy modules (timm, the archives) are imported when a command
runs, so building the CLI stays cheap; the command names come from ``results.COMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from izoo.benchmarks.results import read_results, run_command, table_command, write_result

log = logging.getLogger(__name__)


def _settings(cls, settings_arg: str | None, **overrides):
    """A task's settings from ``--settings``, with the options given on the command line (not None) on top."""
    settings = cls.from_json(settings_arg)
    for name, value in overrides.items():
        if value:
            setattr(settings, name, value)
    return settings


def _add_table_command(sub: argparse._SubParsersAction, task: str, help_text: str, func,
                       outputs_required: bool = True) -> argparse.ArgumentParser:
    """A table command of ``task``: ``--runs`` (its result JSONs), ``--out-csv`` and ``--out-md``."""
    t = sub.add_parser(table_command(task), help=help_text)
    t.add_argument("--runs", nargs="+", required=True, help=f"{run_command(task)} result JSONs")
    t.add_argument("--out-csv", required=outputs_required, default=None)
    t.add_argument("--out-md", required=outputs_required, default=None)
    t.set_defaults(func=func)
    return t


# -- classification (the paper's Table 2) ---------------------------------------------------------------------

def _bench_classify(args: argparse.Namespace) -> int:
    """Run one (tokenizer, seed) classification job and write its result JSON."""
    from izoo.benchmarks.classification.settings import ClassificationSettings
    from izoo.benchmarks.classification.train import run_classification

    settings = ClassificationSettings.from_json(args.settings)
    result = run_classification(args.train, args.test, args.tokenizer, args.seed, settings, device=args.device)
    write_result(result, args.out)
    log.info("%s seed %d: accuracy %.4f, macro precision %.4f, macro F1 %.4f → %s", args.tokenizer, args.seed,
             result["accuracy"], result["precision"], result["f1"], args.out)
    return 0


def _bench_classify_table(args: argparse.Namespace) -> int:
    """Gather run JSONs into the Table-2-style CSV/Markdown and, when asked, draw the token figure."""
    from izoo.benchmarks.classification.table import classification_table, plot_token_groups, table_markdown
    from izoo.benchmarks.tables import write_table
    from izoo.errors import IzooError

    runs = read_results(args.runs, "classification")
    table = classification_table(runs)
    write_table(table, table_markdown(table), args.out_csv, args.out_md, float_format="%.4f")
    if args.figure_from or args.out_png:
        if not (args.figure_from and args.out_png):
            raise IzooError("--figure-from and --out-png go together", None, "pass both, or neither")
        plot_token_groups(json.loads(Path(args.figure_from).read_text()), args.out_png)
    log.info("classification table of %d runs (%d tokenizers + the no-learning row) written", len(runs),
             int((table.tokenizer != "reference").sum()))
    return 0


def register_classification(sub: argparse._SubParsersAction) -> None:
    """``bench-classify`` and ``bench-classify-table``."""
    from izoo.benchmarks.tokenizers import TOKENIZERS

    p = sub.add_parser(run_command("classification"), help="train + test one INR classifier (one tokenizer, one seed)",
                       description="Classify INRs by querying them through a (learnable) tokenizer into a timm ViT.")
    p.add_argument("--train", required=True, help="train archive (e.g. results/cifar10/archive/train.h5)")
    p.add_argument("--test", required=True, help="test archive")
    p.add_argument("--tokenizer", required=True, choices=TOKENIZERS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", default=None,
                   help="JSON object or path to a JSON file; keys of ClassificationSettings (defaults: the paper's)")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.set_defaults(func=_bench_classify)

    t = _add_table_command(sub, "classification", "gather classification runs into a results table (+ figure)",
                           _bench_classify_table, outputs_required=False)
    t.add_argument("--figure-from", default=None, help="run JSON whose learned token coordinates to draw")
    t.add_argument("--out-png", default=None)


# -- segmentation (the paper's Table 3) -----------------------------------------------------------------------

def _bench_segment(args: argparse.Namespace) -> int:
    """Train + evaluate one (tokenizer, seed) segmentation job and write its result JSON."""
    from izoo.benchmarks.segmentation.settings import SegSettings
    from izoo.benchmarks.segmentation.train import train_segmentation

    settings = _settings(SegSettings, args.settings, encoder_checkpoint=args.pretrained, device=args.device)
    record = train_segmentation(args.train, args.test, args.tokenizer, args.seed, settings)
    write_result(record, args.out)
    log.info("%s seed %d: mIoU fine %.2f %%", args.tokenizer, args.seed, 100 * record.get("miou_fine", math.nan))
    return 0


def _bench_segment_table(args: argparse.Namespace) -> int:
    """Table 3 (CSV + markdown) from segmentation result JSONs."""
    from izoo.benchmarks.segmentation.table import segmentation_markdown, segmentation_table
    from izoo.benchmarks.tables import write_table

    table = segmentation_table(read_results(args.runs, "segmentation"))
    write_table(table, segmentation_markdown(table), args.out_csv, args.out_md)
    return 0


def register_segmentation(sub: argparse._SubParsersAction) -> None:
    """``bench-segment`` and ``bench-segment-table``."""
    from izoo.benchmarks.segmentation.settings import SEG_TOKENIZERS

    p = sub.add_parser(run_command("segmentation"), help="train + evaluate the Cityscapes-INR segmentation benchmark")
    p.add_argument("--train", required=True, help="train archive (SIRENs with label_map extras)")
    p.add_argument("--test", required=True, help="evaluation archive (val split)")
    p.add_argument("--tokenizer", default="uniform", choices=SEG_TOKENIZERS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", default=None, help="JSON object or file overriding SegSettings (defaults = paper)")
    p.add_argument("--encoder-checkpoint", dest="pretrained", default=None,
                   help="local encoder checkpoint (timm pvt_v2_b0 state dict); overrides settings.encoder_checkpoint")
    p.add_argument("--device", default=None, help="auto (CUDA if present), cpu, cuda, ...")
    p.add_argument("--out", required=True, help="result JSON")
    p.set_defaults(func=_bench_segment)
    _add_table_command(sub, "segmentation", "Table 3 from bench-segment result files", _bench_segment_table)


# -- pose (the paper's Table 5) -------------------------------------------------------------------------------

def _bench_pose(args: argparse.Namespace) -> int:
    """Train + evaluate one pose job (tokenizer, variant settings, seed) and write its result JSON."""
    from izoo.benchmarks.pose.settings import PoseSettings
    from izoo.benchmarks.pose.train import train_pose

    settings = _settings(PoseSettings, args.settings, tokenizer=args.tokenizer, device=args.device)
    record = train_pose(args.archive, args.kept, args.seed, settings)
    write_result(record, args.out)
    unseen = record["unseen"] or {}
    log.info("pose %s seed %d: seen RE %.2f°, unseen RE %s°", record["method"], args.seed,
             record["seen"]["re_mean"], f"{unseen.get('re_mean', math.nan):.2f}")
    return 0


def _bench_pose_table(args: argparse.Namespace) -> int:
    """Table 5 (CSV + markdown) from pose result JSONs."""
    from izoo.benchmarks.pose.table import pose_markdown, pose_note, pose_table
    from izoo.benchmarks.tables import write_table

    runs = read_results(args.runs, "pose")
    table = pose_table(runs)
    write_table(table, pose_markdown(table, pose_note(runs[0]["settings"])), args.out_csv, args.out_md)
    return 0


def register_pose(sub: argparse._SubParsersAction) -> None:
    """``bench-pose`` and ``bench-pose-table``."""
    from izoo.benchmarks.pose.settings import POSE_TOKENIZERS

    p = sub.add_parser(run_command("pose"), help="train + evaluate the OmniObject3D-INR pose regression benchmark")
    p.add_argument("--archive", required=True, help="NeRF archive (results/omni/archive/all.h5)")
    p.add_argument("--kept", default=None, help="kept_scenes.csv (item_id[, label]); all archive scenes if omitted")
    p.add_argument("--settings", default=None, help="JSON object or file overriding PoseSettings (defaults = paper)")
    p.add_argument("--tokenizer", default=None, choices=POSE_TOKENIZERS, help="overrides settings.tokenizer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="auto (CUDA if present), cpu, cuda, ...")
    p.add_argument("--out", required=True, help="result JSON")
    p.set_defaults(func=_bench_pose)
    _add_table_command(sub, "pose", "Table 5 from bench-pose result files", _bench_pose_table)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register every benchmark command (one call per task)."""
    register_classification(subparsers)
    register_segmentation(subparsers)
    register_pose(subparsers)
