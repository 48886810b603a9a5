"""Refinement plans: read a phase's PSNR reports, pack the failing items into dense jobs for the next phase.

``plan.json`` = ``{"phase": next_phase, "n_failing": n, "jobs": {"job-0000": [{"index": i, "init": "x.h5"}, ...]}}``;
items are in manifest order, ``refine_job_size`` per job; ``init`` is the weights file written beside each
report (same path, ``.h5``). No failing items → ``"jobs": {}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from izoo.atomic import atomic_path
from izoo.errors import IzooError
from izoo.fitting import psnr_report
from izoo.archive.layout import PHASES

#: what planning reads of a PSNR report (izoo.fitting.psnr_report): which items failed
PLAN_COLUMNS = ("index", "passed")


def plan_refinement(reports: Sequence[str | Path], phase: str, job_size: int) -> dict[str, Any]:
    """The plan for ``phase`` (extended or until_threshold) from the previous phase's reports."""
    if phase not in PHASES[1:]:
        raise IzooError(f"cannot plan refinement phase {phase!r}", None, "use extended or until_threshold")
    if int(job_size) < 1:
        raise IzooError(f"refine_job_size must be ≥ 1 (got {job_size})", "config.yaml", "set refine_job_size to e.g. 1024")
    failing: list[tuple[int, str]] = []
    for report_path in reports:
        report = psnr_report.read(report_path, PLAN_COLUMNS)
        weights = Path(report_path).with_suffix(".h5")
        rows = report.loc[~report["passed"], "index"].astype(int).tolist()
        if rows and not weights.exists():
            raise IzooError("weights file beside the PSNR report is missing", weights,
                            "rerun the fitting job that writes both")
        failing += [(i, str(weights)) for i in rows]
    failing.sort()
    seen = set()
    for index, _ in failing:
        if index in seen:
            raise IzooError(f"item {index} appears in more than one report", None,
                            "pass each report of the previous phase once")
        seen.add(index)
    jobs: dict[str, list[dict[str, Any]]] = {}
    for k, start in enumerate(range(0, len(failing), int(job_size))):
        jobs[f"job-{k:04d}"] = [{"index": i, "init": w} for i, w in failing[start:start + int(job_size)]]
    return {"phase": phase, "n_failing": len(failing), "jobs": jobs}


def write_plan(plan: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``plan.json`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(plan, indent=1) + "\n")
    return path


def read_plan(path: str | Path) -> dict[str, Any]:
    """Read ``plan.json`` (one-line error if missing or malformed)."""
    path = Path(path)
    if not path.exists():
        raise IzooError("refinement plan is missing", path, "rerun izoo plan-refinement (the workflow's plan rule)")
    try:
        plan = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IzooError(f"refinement plan is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})", path,
                        "delete it and rerun izoo plan-refinement") from exc
    if not isinstance(plan, dict) or not isinstance(plan.get("jobs"), dict):
        raise IzooError("refinement plan lacks a 'jobs' mapping", path, "delete it and rerun izoo plan-refinement")
    return plan


def job_items(plan: Mapping[str, Any], job: str, manifest: pd.DataFrame, plan_path: str | Path = "plan.json") -> pd.DataFrame:
    """Manifest rows of one job, in manifest order, with an ``init`` column."""
    if job not in plan["jobs"]:
        raise IzooError(f"job {job!r} is not in the plan (jobs: {', '.join(sorted(plan['jobs'])) or 'none'})",
                        plan_path, "rerun the workflow so that it asks only for planned jobs")
    entries = pd.DataFrame(plan["jobs"][job], columns=["index", "init"])
    entries["index"] = entries["index"].astype(int)
    rows = manifest.merge(entries, on="index", how="inner")
    if len(rows) != len(entries):
        missing = sorted(set(entries["index"]) - set(rows["index"]))
        raise IzooError(f"plan items {missing[:5]} are not in the manifest", plan_path,
                        "rebuild the plan: the manifest changed since it was made")
    return rows.sort_values("index").reset_index(drop=True)
