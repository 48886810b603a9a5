"""``izoo`` sub-commands of the benchmarks; ``register`` is a plain list of each benchmark's registration."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _bench_classify(args: argparse.Namespace) -> int:
    """Run one (tokenizer, seed) classification job and write its result JSON."""
    from izoo.benchmarks.classification import ClassificationSettings, run_classification
    from izoo.benchmarks.results import write_result

    settings = ClassificationSettings.from_json(args.settings)
    result = run_classification(args.train, args.test, args.tokenizer, args.seed, settings, device=args.device)
    write_result(result, args.out)
    log.info("%s seed %d: accuracy %.4f, macro precision %.4f, macro F1 %.4f → %s", args.tokenizer, args.seed,
             result["accuracy"], result["precision"], result["f1"], args.out)
    return 0


def _bench_classify_table(args: argparse.Namespace) -> int:
    """Gather run JSONs into the Table-2-style CSV/Markdown and, when asked, draw the token figure."""
    from izoo.benchmarks.results import read_results
    from izoo.benchmarks.tables import classification_table, plot_token_groups, table_markdown, write_table
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

    p = sub.add_parser("bench-classify", help="train + test one INR classifier (one tokenizer, one seed)",
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

    t = sub.add_parser("bench-classify-table", help="gather classification runs into a results table (+ figure)")
    t.add_argument("--runs", nargs="+", required=True, help="bench-classify result JSONs")
    t.add_argument("--out-csv", default=None)
    t.add_argument("--out-md", default=None)
    t.add_argument("--figure-from", default=None, help="run JSON whose learned token coordinates to draw")
    t.add_argument("--out-png", default=None)
    t.set_defaults(func=_bench_classify_table)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register every benchmark command (one call per benchmark)."""
    register_classification(subparsers)
    from izoo.benchmarks import pose, segmentation

    segmentation.register(subparsers)  # bench-segment, bench-segment-table
    pose.register(subparsers)  # bench-pose, bench-pose-table
