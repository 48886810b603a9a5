"""The benchmark result file: one JSON object per training run, written by ``izoo bench-*``, read by the tables.

Every result names its task under ``task`` (the config's ``benchmarks.<name>.task``: ``classification``,
``segmentation`` or ``pose``) and carries the keys its task's table reads (``REQUIRED_KEYS``); the rest is the
run's record (settings, history, timings, the no-learning ``reference``...). Segmentation and pose results of
older izoo versions name the task ``benchmark``; the reader says so (rerun them) instead of reading two keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from izoo.atomic import atomic_path
from izoo.errors import IzooError

#: the key naming a result's task
TASK_KEY = "task"
#: task -> the ``izoo`` command that writes its results and the one that tabulates them
COMMANDS = {"classification": ("bench-classify", "bench-classify-table"),
            "segmentation": ("bench-segment", "bench-segment-table"),
            "pose": ("bench-pose", "bench-pose-table")}
TASKS = tuple(COMMANDS)
#: keys every result of a task carries (what its table reads), besides ``task``
REQUIRED_KEYS = {
    "classification": ("tokenizer", "seed", "accuracy", "precision", "f1"),
    "segmentation": ("tokenizer", "seed", "settings", "params_m", "gflops_paper_convention", "gflops_network",
                     "gflops_with_query"),
    "pose": ("tokenizer", "seed", "pretrain", "method", "settings", "seen", "unseen"),
}


def run_command(task: str) -> str:
    """The ``izoo`` command that writes results of ``task``."""
    return COMMANDS[task][0]


def table_command(task: str) -> str:
    """The ``izoo`` command that tabulates results of ``task``."""
    return COMMANDS[task][1]


def _problem(record: Mapping[str, Any], task: str) -> str | None:
    """What makes ``record`` not a result of ``task`` (None when it is one)."""
    found = record.get(TASK_KEY)
    if found != task:
        return f"not a {task} run result ({TASK_KEY}={found!r})"
    missing = [k for k in REQUIRED_KEYS[task] if k not in record]
    return f"{task} run result lacks {missing}" if missing else None


def write_result(record: Mapping[str, Any], path: str | Path) -> Path:
    """Write one run's result JSON atomically (its ``task`` and required keys are checked first)."""
    task = record.get(TASK_KEY)
    problem = _problem(record, task) if task in COMMANDS else f"unknown {TASK_KEY} {task!r}"
    if problem:
        raise ValueError(f"refusing to write a malformed benchmark result: {problem}")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return path


def read_results(paths: Iterable[str | Path], task: str) -> list[dict[str, Any]]:
    """Result records of ``task`` from JSON files; a missing, broken or foreign file is a one-line ``IzooError``."""
    command = run_command(task)
    runs = []
    for path in map(Path, paths):
        try:
            record = json.loads(path.read_text())
        except OSError as exc:
            raise IzooError(f"cannot read {task} run result ({type(exc).__name__})", path,
                            f"rerun the `izoo {command}` job that writes it") from exc
        except json.JSONDecodeError as exc:
            raise IzooError(f"{task} run result is not JSON ({exc})", path,
                            f"delete it and rerun the `izoo {command}` job that writes it") from exc
        problem = _problem(record, task) if isinstance(record, dict) else f"not a {task} run result (not an object)"
        if problem:
            legacy = isinstance(record, dict) and TASK_KEY not in record and "benchmark" in record
            raise IzooError(problem, path, f"rerun `izoo {command}`: the file names its task under "
                            "'benchmark', an older izoo's key" if legacy else f"pass files written by `izoo {command}`")
        runs.append(record)
    if not runs:
        raise IzooError(f"no {task} run results given", None, f"pass --runs with at least one `izoo {command}` JSON")
    return runs
