"""The benchmark result file (izoo.benchmarks.results): one task key, required keys, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from izoo.benchmarks.results import REQUIRED_KEYS, TASK_KEY, TASKS, read_results, write_result
from izoo.errors import IzooError


def record(task: str) -> dict:
    return {TASK_KEY: task, **{k: 0 for k in REQUIRED_KEYS[task]}}


@pytest.mark.parametrize("task", TASKS)
def test_written_results_read_back(tmp_path: Path, task: str) -> None:
    path = write_result({**record(task), "extra": [1, 2]}, tmp_path / "run.json")
    assert read_results([path], task) == [{**record(task), "extra": [1, 2]}]


def test_writer_refuses_a_result_without_its_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lacks"):
        write_result({TASK_KEY: "pose", "seed": 0}, tmp_path / "x.json")
    with pytest.raises(ValueError, match="unknown task"):
        write_result({"benchmark": "pose"}, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_reader_errors_are_one_line(tmp_path: Path) -> None:
    seg = write_result(record("segmentation"), tmp_path / "seg.json")
    with pytest.raises(IzooError, match="not a pose run result") as info:
        read_results([seg], "pose")
    assert "\n" not in str(info.value) and "bench-pose" in str(info.value)
    with pytest.raises(IzooError, match="cannot read"):
        read_results([tmp_path / "missing.json"], "pose")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(IzooError, match="not JSON"):
        read_results([tmp_path / "broken.json"], "pose")
    with pytest.raises(IzooError, match="no pose run results"):
        read_results([], "pose")


def test_an_older_result_naming_its_task_benchmark_is_told_to_rerun(tmp_path: Path) -> None:
    old = {k: v for k, v in record("pose").items() if k != TASK_KEY}
    (tmp_path / "old.json").write_text(json.dumps({"benchmark": "pose", **old}))
    with pytest.raises(IzooError, match="older izoo"):
        read_results([tmp_path / "old.json"], "pose")
