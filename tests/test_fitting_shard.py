"""Shard fitting: one stream per job, finished groups in the work dir, resume after a kill, corrupt group files,
refinement jobs."""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pandas as pd
import pytest
import torch

from izoo.archive import layout
from izoo.fitting import refine
from izoo.fitting import psnr_report
from izoo.fitting.shard import fit_shard
from izoo.fitting.stream import FitInterrupted

N_ITEMS = 5



def _dataset_cfg(**fit):
    return {"source": {"format": "folder", "root": "items-come-from-the-loader"},
            "model": {"family": "siren", "depth": 3, "width": 8, "w0": 30, "init": "siren"},
            "seed": {"mode": "per_item", "value": 7},
            "fit": {"batch_size": 2, "iterations": 20, "check_every": 5, "checkpoint_every": 10, "lr": 1e-2,
                    "lr_min": 1e-4, "gate_psnr": 25.0, "device": "cpu", "compile": "off",
                    "extended": {"factor": 1, "patience": 10}, **fit}}


def _manifest():
    return pd.DataFrame({"index": range(N_ITEMS), "split": ["train"] * N_ITEMS,
                         "item_id": [f"img{i}" for i in range(N_ITEMS)], "label": [i % 2 for i in range(N_ITEMS)],
                         "source_id": [f"file{i}.png" for i in range(N_ITEMS)], "shard": ["train-00000"] * N_ITEMS})


def _loader(with_label_map=False):
    gen = torch.Generator().manual_seed(11)
    images = torch.rand(N_ITEMS, 3, 6, 6, generator=gen)
    images[0] = 0.4  # one easy item

    def load(row):
        idx = int(row["index"])
        label_map = torch.full((6, 6), idx, dtype=torch.uint8) if with_label_map else None
        return types.SimpleNamespace(item_id=row["item_id"], label=row["label"], image=images[idx], label_map=label_map)

    return load


class _StopAfter:
    """Stop request after ``n`` polls (the stream polls once per step), like a SIGTERM mid-job."""

    def __init__(self, n):
        self.n, self.reason = n, None

    def should_stop(self):
        self.n -= 1
        if self.n < 0:
            self.reason = "test kill"
        return self.reason is not None


def test_resume_after_kill_gives_the_same_weights(tmp_path, capsys):
    cfg = _dataset_cfg()
    whole = fit_shard(_manifest(), _loader(), cfg, tmp_path / "a", "basic", dataset="demo")
    err = capsys.readouterr().err
    assert "job fitted (5 items in 3 group(s))" in err and "progress 5/5 items" in err

    with pytest.raises(FitInterrupted):   # the first two items take 21 steps; stop 13 steps into the next two
        fit_shard(_manifest(), _loader(), cfg, tmp_path / "b", "basic", stop=_StopAfter(21 + 13))
    assert (tmp_path / "b" / "group-00000.h5").exists() and not (tmp_path / "b" / "group-00001.h5").exists()
    assert (tmp_path / "b" / "job.ckpt").exists()
    capsys.readouterr()
    resumed = fit_shard(_manifest(), _loader(), cfg, tmp_path / "b", "basic", dataset="demo")
    err = capsys.readouterr().err
    assert "1 finished group(s) of 2 items reused from work dir" in err and "job resumed from its checkpoint" in err
    assert "progress 5/5 items" in err and "mean PSNR" in err
    assert not (tmp_path / "b" / "job.ckpt").exists()
    for name, value in whole.params.items():
        assert np.array_equal(value, resumed.params[name]), name
    pd.testing.assert_frame_equal(whole.items.drop(columns="seconds"), resumed.items.drop(columns="seconds"))
    assert whole.items["index"].tolist() == list(range(N_ITEMS))
    assert list(whole.report.columns) == psnr_report.COLUMNS
    assert whole.attrs["phase"] == "basic" and whole.attrs["seed_mode"] == "per_item"
    assert whole.attrs["gate_psnr"] == 25.0 and "de-normalised" in whole.attrs["normalisation"]["psnr"]


@pytest.mark.parametrize("kill_after", [4, 23, 41, 58])
def test_gate_stream_resumed_anywhere_is_bitwise_identical(tmp_path, kill_after):
    """Items stop at different steps and refill their slots; a kill at any step resumes to the same weights."""
    cfg = _dataset_cfg(stop="gate", min_iterations=3, iterations=60, check_every=1, checkpoint_every=7,
                       gate_psnr=24.0)
    whole = fit_shard(_manifest(), _loader(), cfg, tmp_path / "a", "basic")
    assert len(set(whole.items["iterations"])) > 1 and whole.items["iterations"].min() >= 3
    work = tmp_path / "b"
    stop = _StopAfter(kill_after)
    with pytest.raises(FitInterrupted):
        fit_shard(_manifest(), _loader(), cfg, work, "basic", stop=stop)
    resumed = None
    while resumed is None:   # a second kill in the resumed run too, until it runs through
        with contextlib.suppress(FitInterrupted):
            resumed = fit_shard(_manifest(), _loader(), cfg, work, "basic", stop=_StopAfter(kill_after))
    for name, value in whole.params.items():
        assert np.array_equal(value, resumed.params[name]), name
    pd.testing.assert_frame_equal(whole.items.drop(columns="seconds"), resumed.items.drop(columns="seconds"))


def test_corrupt_or_stale_group_file_is_refitted(tmp_path, capsys):
    cfg = _dataset_cfg()
    first = fit_shard(_manifest(), _loader(), cfg, tmp_path, "basic")
    group = tmp_path / "group-00001.h5"
    data = group.read_bytes()
    group.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    again = fit_shard(_manifest(), _loader(), cfg, tmp_path, "basic")
    err = capsys.readouterr().err
    assert "warning: finished group" in err and "group-00001.h5 cannot be reused" in err and "refitting the job" in err
    assert "job fitted" in err
    for name, value in first.params.items():
        assert np.array_equal(value, again.params[name])
    capsys.readouterr()
    again = fit_shard(_manifest(), _loader(), cfg, tmp_path, "basic")   # complete groups, no checkpoint: reused
    assert "3 finished group(s) of 5 items reused" in capsys.readouterr().err
    # other settings → nothing reused
    fit_shard(_manifest(), _loader(), _dataset_cfg(iterations=10), tmp_path, "basic")
    err = capsys.readouterr().err
    assert "made with other settings" in err and "reused from work dir" not in err


def test_refinement_job_continues_from_init_and_sums_iterations(tmp_path):
    cfg = _dataset_cfg(gate_psnr=60.0)   # nothing passes: every item is refined
    basic = fit_shard(_manifest(), _loader(with_label_map=True), cfg, tmp_path / "w0", "basic", dataset="demo")
    basic.write(tmp_path / "train-00000.h5", tmp_path / "train-00000.csv")
    assert basic.extras["label_map"].shape == (N_ITEMS, 6, 6)

    plan = refine.plan_refinement([tmp_path / "train-00000.csv"], "extended", job_size=3)
    assert plan["n_failing"] == N_ITEMS and list(plan["jobs"]) == ["job-0000", "job-0001"]
    items = refine.job_items(plan, "job-0001", _manifest())
    assert items["index"].tolist() == [3, 4] and (items["init"] == str(tmp_path / "train-00000.h5")).all()

    ext = fit_shard(items, _loader(with_label_map=True), cfg, tmp_path / "w1", "extended", dataset="demo")
    ext.write(tmp_path / "job-0001.h5", tmp_path / "job-0001.csv")
    report = pd.read_csv(tmp_path / "job-0001.csv")
    basic_rows = basic.items.set_index("index").loc[[3, 4]]
    np.testing.assert_allclose(report["psnr_before"], basic_rows["psnr"], rtol=1e-5)
    assert (report["phase"] == "extended").all() and (report["iterations"] > 0).all()
    assert (report["psnr_after"] >= report["psnr_before"] - 1e-4).all()
    written = layout.read_inr_file(tmp_path / "job-0001.h5")
    np.testing.assert_array_equal(written.items["iterations"], basic_rows["iterations"].to_numpy() + report["iterations"])
    assert (written.items["phase"] == "extended").all() and written.attrs["phase"] == "extended"
    np.testing.assert_array_equal(written.extras["label_map"][:, 0, 0], [3, 4])
    assert set(written.extras) == {"label_map"}  # the work dir's per-batch report stays out of the output

    # the next plan reads the extended reports; passing items would be left out
    report.loc[0, "passed"] = True
    report.to_csv(tmp_path / "job-0001.csv", index=False)
    nxt = refine.plan_refinement([tmp_path / "job-0001.csv"], "until_threshold", job_size=1024)
    assert nxt["jobs"] == {"job-0000": [{"index": 4, "init": str(tmp_path / "job-0001.h5")}]}


def test_plan_with_no_failures_has_no_jobs(tmp_path):
    pd.DataFrame({"index": [0, 1], "passed": [True, True]}).to_csv(tmp_path / "r.csv", index=False)
    assert refine.plan_refinement([tmp_path / "r.csv"], "extended", 8) == {"phase": "extended", "n_failing": 0,
                                                                          "jobs": {}}


def test_plan_over_several_reports_packs_every_failing_item_in_manifest_order(tmp_path):
    """Failing items of *every* report (not only the last one), sorted by index across reports, dense jobs."""
    reports = {  # shard → (index, passed); the reports come in an order that is not the index order
        "train-00001": [(4, False), (5, True), (6, False), (7, False)],
        "test-00000": [(8, False), (9, True)],
        "train-00000": [(0, True), (1, False), (2, True), (3, False)],
    }
    paths = []
    for shard, rows in reports.items():
        pd.DataFrame(rows, columns=["index", "passed"]).to_csv(tmp_path / f"{shard}.csv", index=False)
        (tmp_path / f"{shard}.h5").write_bytes(b"")   # plan-refinement only checks the weights file exists
        paths.append(tmp_path / f"{shard}.csv")
    plan = refine.plan_refinement(paths, "extended", job_size=2)

    def w(shard):
        return str(tmp_path / f"{shard}.h5")

    assert plan == {"phase": "extended", "n_failing": 6, "jobs": {
        "job-0000": [{"index": 1, "init": w("train-00000")}, {"index": 3, "init": w("train-00000")}],
        "job-0001": [{"index": 4, "init": w("train-00001")}, {"index": 6, "init": w("train-00001")}],
        "job-0002": [{"index": 7, "init": w("train-00001")}, {"index": 8, "init": w("test-00000")}],
    }}


def test_group_file_of_other_items_under_the_same_indices_is_refitted(tmp_path, capsys):
    """A rebuilt manifest (an item left out) renumbers items: a group file is reused only for the same item ids."""
    fit_shard(_manifest(), _loader(), _dataset_cfg(), tmp_path, "basic")
    shifted = _manifest()
    shifted["item_id"] = [f"img{i + 1}" for i in range(N_ITEMS)]
    capsys.readouterr()
    fit_shard(shifted, _loader(), _dataset_cfg(), tmp_path, "basic")
    err = capsys.readouterr().err
    assert err.count("item ids differ from the manifest's") == 1 and "refitting the job" in err
    assert "reused from work dir" not in err
