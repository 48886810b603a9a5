"""``izoo fit`` and ``izoo plan-refinement``: the fitting commands the Snakemake workflow runs.

Exit codes: 0 done (items below the gate are reported, not an error); 2 a user-facing error (one line on
stderr); 75 stopped early by SIGTERM/SIGUSR1/SIGINT (Ctrl-C) or ``--runtime-minutes`` with progress saved in
``--workdir`` (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from izoo.config import DatasetConfig, dataset_config
from izoo.datasets.manifest import load_manifest
from izoo.errors import BadItemError, IzooError
from izoo.jsonargs import json_file_of, load_json_object
from izoo.fitting import refine
from izoo.archive.layout import PHASES
from izoo.fitting.progress import emit
from izoo.fitting.shard import EXIT_INTERRUPTED, StopControl, fit_shard
from izoo.fitting.stream import FitInterrupted


def parse_dataset_config(text: str) -> dict[str, Any]:
    """The ``--dataset-config`` JSON string (or ``@file.json``) as a plain dict, unchecked (for readers that need only
    its ``source:`` section); ``dataset_config_arg`` is the parsed, checked form the fitting commands use."""
    return load_json_object(text, "--dataset-config", "one entry of config.yaml's datasets:")


def dataset_config_arg(text: str) -> DatasetConfig:
    """The ``--dataset-config`` as a ``DatasetConfig``: recipe resolved, the schema's defaults filled, checked without
    jsonschema; a typo or bad value is a one-line error naming its file, before anything is fitted."""
    return DatasetConfig.parse(parse_dataset_config(text), config_source(text))


def config_source(value: str) -> str:
    """Where a ``--dataset-config`` came from, for error messages: its file, else the option itself."""
    return str(json_file_of(value) or "--dataset-config")


def sample_loader(dataset_cfg: DatasetConfig | Mapping[str, Any]) -> Callable[[Mapping[str, Any]], Any]:
    """``load(manifest_row) -> Sample`` of the dataset's source (``izoo.datasets.open_source``)."""
    try:
        from izoo.datasets import open_source
    except ImportError as exc:
        raise IzooError(f"izoo.datasets is unavailable ({exc})", None, "reinstall izoo (pip install -e .)") from exc
    dataset = open_source(dataset_config(dataset_cfg).to_dict()["source"])

    def load(row: Mapping[str, Any]) -> Any:
        try:
            return dataset.load(row)
        except BadItemError as exc:   # the reader's fix assumes a manifest build, which is over by now
            raise BadItemError(exc.what, exc.path, dataset.fix_after_manifest()) from exc

    return load


def run_stoppable(runtime_minutes: float | None, workdir: str | Path, work: Callable[[StopControl], Any]) -> Any:
    """``work(stop)`` under SIGTERM/SIGUSR1/deadline handling; ``None`` (after saying so) when it stopped early."""
    stop = StopControl(runtime_minutes).install()
    try:
        return work(stop)
    except FitInterrupted as exc:
        emit(f"stopped: {stop.reason or exc}; progress kept in {workdir}; rerun the same command to resume "
             f"(exit {EXIT_INTERRUPTED})")
        return None
    finally:
        stop.restore()


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit one shard (basic) or one refinement job (extended / until_threshold)."""
    cfg = dataset_config_arg(args.dataset_config)
    manifest = load_manifest(args.manifest)
    if args.phase == "basic":
        if not args.shard:
            raise IzooError("--phase basic needs --shard", None, "pass --shard SPLIT-NNNNN from shards.json")
        items = manifest[manifest["shard"] == args.shard].sort_values("index").reset_index(drop=True)
        if items.empty:
            raise IzooError(f"shard {args.shard!r} has no items", args.manifest, "pass a shard id listed in shards.json")
    else:
        if not (args.plan and args.job):
            raise IzooError(f"--phase {args.phase} needs --plan and --job", None,
                            "pass the plan.json written by izoo plan-refinement and one of its job ids")
        plan = refine.read_plan(args.plan)
        if plan.get("phase") not in (None, args.phase):
            raise IzooError(f"plan is for phase {plan.get('phase')!r}, not {args.phase!r}", args.plan,
                            "pass the plan of the same phase")
        items = refine.job_items(plan, args.job, manifest, args.plan)
    done = run_stoppable(args.runtime_minutes, args.workdir,
                         lambda stop: fit_shard(items, sample_loader(cfg), cfg, args.workdir, args.phase,
                                                dataset=args.dataset, stop=stop))
    if done is None:
        return EXIT_INTERRUPTED
    out = done
    out.write(args.out_weights, args.out_report)
    n_pass = int(out.report["passed"].sum())
    emit(f"done: {len(out.report)} items, {n_pass} passed the {out.attrs['gate_psnr']:g} dB gate, "
         f"{len(out.report) - n_pass} below it; wrote {args.out_weights} and {args.out_report}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Write the refinement plan of ``--phase`` from the previous phase's reports."""
    cfg = dataset_config_arg(args.dataset_config)
    plan = refine.plan_refinement(args.reports, args.phase, cfg.refine_job_size)
    refine.write_plan(plan, args.out)
    emit(f"plan {args.phase}: {plan['n_failing']} failing items in {len(plan['jobs'])} jobs → {args.out}")
    return 0


def add_job_arguments(parser: argparse.ArgumentParser, recorded_in: str) -> None:
    """The arguments every fitting job takes: dataset, its config entry, the manifest, work dir, time limit."""
    parser.add_argument("--dataset", required=True, help=f"dataset name (recorded in {recorded_in})")
    parser.add_argument("--dataset-config", required=True, help="the dataset's config entry as JSON (or @file.json)")
    parser.add_argument("--manifest", required=True, help="results/{ds}/manifest.csv")
    parser.add_argument("--workdir", required=True, help="resume state of this job")
    parser.add_argument("--runtime-minutes", type=float, default=None,
                        help="job time limit; the job saves and exits 75 shortly before it")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fit`` and ``plan-refinement`` to the ``izoo`` command line."""
    fit = subparsers.add_parser("fit", help="fit the INRs of one shard or refinement job (resumable)",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_arguments(fit, "the weights file")
    fit.add_argument("--phase", required=True, choices=PHASES)
    fit.add_argument("--shard", help="shard id (phase basic), e.g. train-00000")
    fit.add_argument("--plan", help="plan.json of the phase (extended / until_threshold)")
    fit.add_argument("--job", help="job id in the plan, e.g. job-0000")
    fit.add_argument("--out-weights", required=True, help="weights file to write at the end (.h5)")
    fit.add_argument("--out-report", required=True, help="PSNR report CSV to write at the end")
    fit.set_defaults(func=cmd_fit)

    plan = subparsers.add_parser("plan-refinement", help="pack the items below the gate into refinement jobs")
    plan.add_argument("--dataset", required=True)
    plan.add_argument("--dataset-config", required=True, help="the dataset's config entry as JSON (or @file.json)")
    plan.add_argument("--phase", required=True, choices=PHASES[1:], help="the phase the plan is for")
    plan.add_argument("--reports", nargs="*", default=[], help="PSNR reports of the previous phase")
    plan.add_argument("--out", required=True, help="plan.json to write")
    plan.set_defaults(func=cmd_plan)
