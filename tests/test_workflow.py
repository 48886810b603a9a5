"""The Snakemake workflow run for real (CLI, local profile) on the demo data.

One module-scoped run of the tiny overlay serves several checks (outputs, reports, a second run doing
nothing); the interruption test and the bad-config test use their own scratch copies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from workflow_helpers import TINY_OVERLAY, copy_workflow, run_snakemake, snakemake_cmd, workflow_env

pytestmark = pytest.mark.workflow
DS = "demo_cifar10"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A complete local run of the tiny demo workflow."""
    work = copy_workflow(tmp_path_factory.mktemp("wf-full"))
    proc = run_snakemake(work)
    return work, proc


def test_full_run_produces_archives_reports_and_benchmark(finished_run):
    work, proc = finished_run
    res = work / "results" / DS
    manifest = pd.read_csv(res / "manifest.csv")
    assert len(manifest) == 48  # max_items 24 per split, two splits
    for split in ("train", "test"):
        with h5py.File(res / "archive" / f"{split}.h5", "r") as h5:
            idx = h5["items/index"][:]
            assert list(idx) == sorted(manifest.loc[manifest["split"] == split, "index"])  # manifest order
            assert h5["params/layer0.weight"].shape == (24, 64, 2)
            assert np.isfinite(h5["items/psnr"][:]).all()
    for name in ("psnr_by_shard.md", "psnr_by_class.md", "psnr_by_phase.md", "psnr_by_class.png", "failures.csv", "items.csv"):
        assert (res / "reports" / name).stat().st_size > 0, name
    summary = json.loads((res / "reports" / "summary.json").read_text())
    assert summary["items"] == 48 and summary["fit_hours"] > 0 and summary["archive_bytes"] > 0
    assert "izoo dataset summary" in (work / "results" / "summary.md").read_text()
    table1 = pd.read_csv(work / "results" / "summary.csv")
    assert table1.loc[0, "until-threshold cap (it)"] == 120 and "recipe" in table1.columns
    assert "izoo dataset summary" in proc.stdout + proc.stderr  # the table is printed at the end
    bench = json.loads((work / "results" / "benchmarks" / "demo_classification" / "lc-seed0.json").read_text())
    assert 0.0 <= bench["accuracy"] <= 1.0
    assert bench["reference"]["rule"] == "majority class of the train split"
    assert (work / "results" / "benchmarks" / "demo_classification" / "table.md").exists()


def test_refinement_runs_only_for_failing_items(finished_run):
    work, _ = finished_run
    res = work / "results" / DS / "fit"
    basic = pd.concat(pd.read_csv(p) for p in sorted((res / "basic").glob("*.csv")))
    failing_after_basic = set(basic.loc[~basic["passed"], "index"])
    plan = json.loads((res / "extended" / "plan.json").read_text())
    planned = {item["index"] for job in plan["jobs"].values() for item in job}
    assert planned == failing_after_basic
    extended = [pd.read_csv(p) for p in sorted((res / "extended").glob("job-*.csv"))]
    refitted = set(pd.concat(extended)["index"]) if extended else set()
    assert refitted == failing_after_basic
    items = pd.read_csv(work / "results" / DS / "reports" / "items.csv")
    for row in items.itertuples():  # each item's final phase is the last phase that ran it
        if row.index not in failing_after_basic:
            assert row.phase == "basic"
        else:
            assert row.phase in ("extended", "until_threshold")
    failures = pd.read_csv(work / "results" / DS / "reports" / "failures.csv")
    assert set(failures["index"]) == set(items.loc[~items["passed"], "index"])  # kept and listed, never dropped


def test_second_run_does_nothing_even_after_a_touch(finished_run):
    work, _ = finished_run
    os.utime(work / "results" / DS / "manifest.csv")  # a timestamp touch must not trigger refits
    proc = run_snakemake(work, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]


def test_deleted_archive_is_rebuilt_and_a_failing_verify_says_why(finished_run):
    """A deleted archive is rebuilt by a plain rerun; a failing verify keeps its problems and fix in its log.

    Runs after the other checks of ``finished_run`` (pytest keeps file order) and leaves it complete again.
    """
    work, _ = finished_run
    archive = work / "results" / DS / "archive"
    (archive / "train.h5").unlink()        # e.g. removed by hand, or by a merge that failed
    run_snakemake(work)
    assert (archive / "train.h5").exists() and "OK" in (archive / "train.verified.txt").read_text()

    with h5py.File(archive / "test.h5", "r+") as h5:   # a flag verify checks and merge does not rewrite
        h5["items/passed"][0] = not h5["items/passed"][0]
    (archive / "test.verified.txt").unlink()
    proc = run_snakemake(work, check=False)
    assert proc.returncode != 0
    log = (work / "logs" / DS / "verify_test.log").read_text()
    assert "PROBLEM: items/passed disagrees with psnr >= gate_psnr" in log, log
    fix = [line for line in log.splitlines() if "fix:" in line]
    assert fix and "delete" in fix[0] and str(Path("results") / DS / "archive" / "test.h5") in fix[0], log
    assert not (archive / "test.verified.txt").exists()

    (archive / "test.h5").unlink()         # what the fix says
    run_snakemake(work)
    assert "OK" in (archive / "test.verified.txt").read_text()
    proc = run_snakemake(work, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]


def test_bad_config_value_is_rejected_before_any_job(tmp_path):
    work = copy_workflow(tmp_path / "wf-bad")
    bad = work / "bad.yaml"
    bad.write_text("datasets:\n  demo_cifar10:\n    fit: {lr: -0.5}\n")
    proc = run_snakemake(work, check=False, overlays=(TINY_OVERLAY, bad))
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "datasets.demo_cifar10.fit.lr" in err and "-0.5" in err, err[-2000:]
    assert not (work / "results").exists() and not (work / "data").exists()


def test_interrupted_fit_resumes_from_finished_batches(tmp_path):
    work = copy_workflow(tmp_path / "wf-kill")
    slow = work / "slow.yaml"  # one shard of 4 batches, slow enough to be caught mid-shard
    slow.write_text("datasets:\n  demo_cifar10:\n    source: {max_items: 24}\n"
                    "    fit: {batch_size: 6, iterations: 150, checkpoint_every: 50}\n    shard_size: 24\n")
    log = work / "logs" / DS / "fit_basic" / "train-00000.log"
    target = f"results/{DS}/fit/basic/train-00000.h5"
    proc = subprocess.Popen(snakemake_cmd(target, overlays=(TINY_OVERLAY, slow)), cwd=work, env=workflow_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        if log.exists() and "group 2/4 fitted" in log.read_text():
            break
        if proc.poll() is not None:
            pytest.fail(f"snakemake ended before the interruption:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    else:
        pytest.fail("fit never wrote group 2")
    os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler or Ctrl-C sends to the whole job
    proc.wait(timeout=120)
    assert not (work / target).exists()  # declared output never half-written
    assert list((work / "work" / DS / "basic" / "train-00000").glob("group-*.h5"))  # progress kept

    run_snakemake(work, target, "--rerun-incomplete", overlays=(TINY_OVERLAY, slow))
    text = log.read_text()
    assert "group 1/4 reused from work dir" in text and "group 2/4 reused from work dir" in text
    assert (work / target).exists()
