"""The files passed between workflow rules: each has one module that writes and reads it (round trips, and a bad
file is a one-line IzooError naming it)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from izoo.datasets.manifest import COLUMNS as MANIFEST_COLUMNS
from izoo.datasets.manifest import csv_bytes, load_manifest, load_shards_info
from izoo.errors import IzooError
from izoo.fitting import psnr_report, refine


def _report(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"index": np.arange(n), "item_id": [f"img{i}" for i in range(n)], "split": "train",
                         "label": np.arange(n) % 2, "shard": "train-00000", "phase": "basic",
                         "psnr_before": np.nan, "psnr_after": np.linspace(20.0, 35.0, n),
                         "iterations": [10] * n, "seconds": [0.5] * n, "passed": [False, True, True][:n]})


def _one_line_error(match: str, call, *args) -> str:
    with pytest.raises(IzooError, match=match) as err:
        call(*args)
    assert "\n" not in str(err.value) and "fix:" in str(err.value)
    return str(err.value)


def test_psnr_report_round_trip_keeps_columns_order_and_types(tmp_path):
    report = _report().iloc[:, ::-1]   # any column order in, COLUMNS order out
    path = psnr_report.write(report, tmp_path / "r.csv")
    assert path.read_text().splitlines()[0] == ",".join(psnr_report.COLUMNS)
    back = psnr_report.read(path)
    pd.testing.assert_frame_equal(back, _report()[psnr_report.COLUMNS], check_dtype=False)
    assert back["passed"].dtype == bool
    both = psnr_report.read_all([path, path])
    assert len(both) == 6 and list(both.columns) == psnr_report.COLUMNS
    assert list(psnr_report.read_all([]).columns) == psnr_report.COLUMNS


def test_bad_psnr_reports_are_one_line_errors(tmp_path):
    _one_line_error("PSNR report is missing", psnr_report.read, tmp_path / "none.csv")
    (tmp_path / "empty.csv").write_text("")
    _one_line_error("PSNR report is unreadable", psnr_report.read, tmp_path / "empty.csv")
    _report()[["index", "passed"]].to_csv(tmp_path / "short.csv", index=False)
    _one_line_error(r"lacks columns \['item_id'", psnr_report.read, tmp_path / "short.csv")
    assert len(psnr_report.read(tmp_path / "short.csv", refine.PLAN_COLUMNS)) == 3   # planning reads only these


def test_plan_round_trip_and_bad_plans(tmp_path):
    plan = {"phase": "extended", "n_failing": 1, "jobs": {"job-0000": [{"index": 0, "init": "a.h5"}]}}
    assert refine.read_plan(refine.write_plan(plan, tmp_path / "plan.json")) == plan
    _one_line_error("refinement plan is missing", refine.read_plan, tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    _one_line_error("not valid JSON", refine.read_plan, tmp_path / "bad.json")
    (tmp_path / "nojobs.json").write_text('{"phase": "extended"}')
    _one_line_error("lacks a 'jobs' mapping", refine.read_plan, tmp_path / "nojobs.json")


def test_manifest_round_trip_and_bad_manifests(tmp_path):
    rows = [(0, "train", "007", 1, "a.png", "train-00000"), (1, "test", "NA", -1, "b.png", "test-00000")]
    (tmp_path / "manifest.csv").write_bytes(csv_bytes(MANIFEST_COLUMNS, rows))
    table = load_manifest(tmp_path)
    assert [tuple(r) for r in table.itertuples(index=False)] == rows   # ids stay strings ("007", "NA")
    _one_line_error("manifest not found", load_manifest, tmp_path / "none.csv")
    pd.DataFrame({"index": [0], "split": ["train"]}).to_csv(tmp_path / "short.csv", index=False)
    _one_line_error("manifest columns are", load_manifest, tmp_path / "short.csv")
    (tmp_path / "shards.json").write_text('{"shards": {}')
    _one_line_error("unreadable shards.json", load_shards_info, tmp_path)
    _one_line_error("shards.json not found", load_shards_info, tmp_path / "elsewhere" / "shards.json")
