"""End-to-end: `snakemake --profile profiles/slurm` on the demo data against a real single-node SLURM (issue #6).

Two copies of the workflow run side by side on the test cluster:

* run A, uninterrupted: the reference (full run, then a second run that must submit nothing);
* run B, interrupted: a fitting job is ``scancel``-ed mid-shard and snakemake is stopped, the rerun
  (``--rerun-incomplete``) must resume that shard from its finished batches; during the rerun another
  fitting job is made to hit its SLURM time limit and must be retried with more runtime and resume.

Both use the unchanged ``profiles/slurm`` plus the overlay ``tests/slurm/overlay`` (status via squeue,
test-scale config). Run B's archives must equal run A's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slurm_cluster import (
    SlurmCluster,
    interrupt_snakemake,
    run_id,
    run_snakemake,
    start_snakemake,
    submitted_jobs,
)

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
DATASET = "demo_cifar10"
PROFILE_ARGS = ["--profile", "profiles/slurm", "--workflow-profile", "tests/slurm/overlay"]
TARGET = "datasets"
# Everything at the top of the repository is copied into a run's directory except these (code is
# the installed izoo package; run outputs must start empty); tests/slurm brings the overlay.
NOT_COPIED = {".git", ".venv", ".ci", ".snakemake", ".pytest_cache", "__pycache__", "izoo", "izoo.egg-info",
              "tests", "docs", "results", "work", "logs", "data"}
FIT_RULES = ("fit_basic", "fit_extended", "fit_until_threshold")
# Lines of `izoo fit` (izoo/fitting/shard.py) in logs/{ds}/fit_basic/{shard}.log.
BATCH_LINE = re.compile(r"izoo-fit: group (\d+)/(\d+) (fitted|reused from work dir)")
STOPPED_LINE = re.compile(r"izoo-fit: stopped: ")
RUN_TIMEOUT_S = 420


def _copy_workflow(dst: Path) -> Path:
    """A private copy of the workflow (results/work/logs land there, not in the repository)."""
    dst.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", ".snakemake")
    for src in REPO.iterdir():
        if src.name in NOT_COPIED:
            continue
        if src.is_dir():
            shutil.copytree(src, dst / src.name, ignore=ignore)
        else:
            shutil.copy2(src, dst / src.name)
    shutil.copytree(REPO / "tests" / "slurm", dst / "tests" / "slurm", ignore=shutil.ignore_patterns("toy"))
    return dst


def _wait_for(what: str, predicate: Callable[[], object], timeout: float, poll: float = 0.3,
              alive: subprocess.Popen | None = None) -> object:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout or if ``alive`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"snakemake exited ({alive.returncode}) while waiting for {what}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def batch_events(text: str) -> list[tuple[int, int, str]]:
    """(batch, n_batches, 'fitted'|'reused') for every batch line of a fitting log, in order."""
    return [(int(b), int(n), "fitted" if kind == "fitted" else "reused") for b, n, kind in BATCH_LINE.findall(text)]


def current_attempt(events: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """The batch events of the latest attempt in a log (every attempt starts at batch 1)."""
    starts = [k for k, (batch, _, _) in enumerate(events) if batch == 1]
    return events[starts[-1]:] if starts else events


def time_limit_minutes(value: str) -> float:
    """Minutes of a SLURM time string: ``MM``, ``MM:SS``, ``HH:MM:SS`` or ``D-HH:MM:SS``."""
    days, _, clock = value.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 1:
        minutes = float(parts[0])
    elif len(parts) == 2:
        minutes = parts[0] + parts[1] / 60
    else:
        minutes = parts[0] * 60 + parts[1] + parts[2] / 60
    return minutes + (int(days) * 1440 if days else 0)


def fitter_pids(workdir: Path, job_workdir: str) -> list[int]:
    """PIDs of the `izoo fit` processes of one job (by its --workdir) running in ``workdir``."""
    pids = []
    workdir_path = os.path.realpath(workdir)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if "fit" in args and "--workdir" in args and cwd == workdir_path:
            if args[args.index("--workdir") + 1] == job_workdir and any(a.endswith("izoo") for a in args[:2]):
                pids.append(int(proc.name))
    return pids


def process_start_time(pid: int) -> float:
    """When a process started (epoch seconds), from /proc/<pid>/stat and the boot time in /proc/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    # fields[0] is field 3 (state) of proc(5); starttime is field 22.
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One workflow copy and what happened to it."""

    workdir: Path
    logs: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)

    def fit_log(self, shard: str) -> Path:
        """The fitting log the workflow writes for a basic shard."""
        return self.workdir / "logs" / DATASET / "fit_basic" / f"{shard}.log"

    def fit_log_text(self, shard: str) -> str:
        """Contents of a shard's fitting log ('' before the job wrote anything)."""
        path = self.fit_log(shard)
        return path.read_text(errors="replace") if path.exists() else ""

    def shards(self) -> dict[str, dict]:
        """shards.json of the dataset."""
        return json.loads((self.workdir / "results" / DATASET / "shards.json").read_text())["shards"]


def _slurm_jobs_of_shard(cluster: SlurmCluster, log_text: str, shard: str) -> list[dict[str, str]]:
    """The fit_basic SLURM jobs of one shard in the run whose snakemake log is ``log_text`` (in id order)."""
    comment = f"rule_fit_basic_wildcards_{DATASET}_{shard}"
    jobs = [job for job in cluster.jobs(name=run_id(log_text)) if job["Comment"] == comment]
    return sorted(jobs, key=lambda job: int(job["JobId"]))


def _pick_running_shard(cluster: SlurmCluster, run: Run, log_path: Path,
                        exclude: set[str]) -> tuple[str, str, list[int]] | None:
    """A running fit_basic job whose fitter fitted >= 1 batch and has >= 2 batches still to go.

    Returns (shard, SLURM job id, fitter PIDs). The fitter must be alive and must have written the
    log itself: a resubmitted job may be RUNNING while the shard's log still holds an earlier attempt.
    """
    shards_file = run.workdir / "results" / DATASET / "shards.json"
    if not shards_file.exists() or "SLURM run ID" not in log_path.read_text(errors="replace"):
        return None
    for shard in run.shards():
        if shard in exclude:
            continue
        events = current_attempt(batch_events(run.fit_log_text(shard)))
        if not events or not any(kind == "fitted" for _, _, kind in events):
            continue
        n_batches = events[0][1]
        if len(events) > n_batches - 2:
            continue
        running = [j for j in _slurm_jobs_of_shard(cluster, log_path.read_text(errors="replace"), shard)
                   if j["JobState"] == "RUNNING"]
        pids = fitter_pids(run.workdir, f"work/{DATASET}/basic/{shard}") if running else []
        try:
            fresh = bool(pids) and run.fit_log(shard).stat().st_mtime >= min(map(process_start_time, pids))
        except (OSError, StopIteration):
            fresh = False
        if fresh:
            return shard, running[-1]["JobId"], pids
    return None


def _interrupted_run(cluster: SlurmCluster, run: Run) -> None:
    """Run B: scancel one fitting job mid-shard and stop snakemake, then rerun; time out another job in the rerun."""
    first = start_snakemake(cluster, run.workdir, [*PROFILE_ARGS, TARGET], "snakemake-B1.log")
    first_log = run.workdir / "snakemake-B1.log"
    try:
        shard, job_id, _ = _wait_for(
            "a fitting job of run B with a finished batch",
            lambda: _pick_running_shard(cluster, run, first_log, set()), timeout=300, alive=first,
        )
        cluster.run("scancel", job_id)
        # SLURM sends SIGTERM; the fitter saves its in-flight batch and says "stopped".
        _wait_for(f"fitting job {job_id} ({shard}) to stop after scancel",
                  lambda: STOPPED_LINE.search(run.fit_log_text(shard)) or not fitter_pids(
                      run.workdir, f"work/{DATASET}/basic/{shard}"), timeout=60)
        run.notes["cancelled"] = {"shard": shard, "job_id": job_id,
                                  "log_at_cancel": run.fit_log_text(shard)}
        state = _wait_for(f"job {job_id} to leave RUNNING/COMPLETING",
                          lambda: cluster.show_job(job_id)["JobState"] not in ("RUNNING", "COMPLETING")
                          and cluster.show_job(job_id)["JobState"], timeout=60)
        assert state == "CANCELLED", f"scancel-ed job {job_id} is {state}"
    finally:
        # The user gives up on this snakemake session (Ctrl-C); it cancels its other jobs.
        interrupt_snakemake(first, first_log)
    run.logs.append(first_log.read_text(errors="replace"))

    second = start_snakemake(cluster, run.workdir, [*PROFILE_ARGS, "--rerun-incomplete", TARGET],
                             "snakemake-B2.log")
    second_log = run.workdir / "snakemake-B2.log"
    try:
        shard, job_id, pids = _wait_for(
            "a fitting job of the rerun with a finished batch",
            lambda: _pick_running_shard(cluster, run, second_log, {run.notes["cancelled"]["shard"]}),
            timeout=300, alive=second,
        )
        # Freeze the fitter so it cannot finish first, then shrink the job's limit below its elapsed
        # time: SLURM itself ends the job with TIMEOUT (SIGTERM, then SIGKILL after KillWait).
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            original_limit = cluster.show_job(job_id)["TimeLimit"]
            cluster.run("scontrol", "update", f"JobId={job_id}", "TimeLimit=1")
            _wait_for(f"job {job_id} ({shard}) to hit its time limit",
                      lambda: cluster.show_job(job_id)["JobState"] == "TIMEOUT", timeout=200, poll=1)
            # Still frozen: the log holds exactly the batches finished before the time limit.
            log_at_timeout = run.fit_log_text(shard)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):   # the step may have been killed meanwhile
                    os.kill(pid, signal.SIGCONT)
        run.notes["timed_out"] = {"shard": shard, "job_id": job_id, "original_limit": original_limit,
                                  "log_at_timeout": log_at_timeout}
        second.wait(timeout=RUN_TIMEOUT_S)
    finally:
        interrupt_snakemake(second, second_log)
    text = second_log.read_text(errors="replace")
    run.logs.append(text)
    assert second.returncode == 0, f"rerun of run B failed ({second.returncode}):\n{text[-6000:]}"


@pytest.fixture(scope="module")
def runs(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Run A (reference) in the background while run B is interrupted and resumed in the foreground."""
    for name in ("Snakefile", "profiles/slurm/config.yaml", "config/demo.yaml"):
        assert (REPO / name).exists(), f"{name} missing: the SLURM end-to-end tests need the workflow"
    base = tmp_path_factory.mktemp("slurm-e2e")
    reference = Run(_copy_workflow(base / "A"))
    interrupted = Run(_copy_workflow(base / "B"))
    proc_a = start_snakemake(slurm_cluster, reference.workdir, [*PROFILE_ARGS, TARGET], "snakemake-A1.log")
    try:
        _interrupted_run(slurm_cluster, interrupted)
        proc_a.wait(timeout=RUN_TIMEOUT_S)
    finally:
        interrupt_snakemake(proc_a, reference.workdir / "snakemake-A1.log")
    text_a = (reference.workdir / "snakemake-A1.log").read_text(errors="replace")
    reference.logs.append(text_a)
    assert proc_a.returncode == 0, f"run A failed ({proc_a.returncode}):\n{text_a[-6000:]}"
    return {"A": reference, "B": interrupted}


def _failing_indices(reports: list[Path]) -> set[int]:
    """Manifest indices of the items a phase's PSNR reports mark as below the gate."""
    failing: set[int] = set()
    for report in reports:
        table = pd.read_csv(report)
        passed = table["passed"].astype(str).str.lower().isin(["true", "1"])
        failing |= set(table.loc[~passed, "index"].astype(int))
    return failing


def test_full_slurm_run_fits_shards_as_gpu_jobs(slurm_cluster: SlurmCluster, runs: dict[str, Run]) -> None:
    """A full profiles/slurm run: one GPU job per shard, refinement jobs only for failing items, archives and reports."""
    run = runs["A"]
    log = run.logs[0]
    jobs = submitted_jobs(slurm_cluster, log)
    assert jobs, "run A submitted no SLURM job"
    for job in jobs:
        # Every job is visible to squeue (with the run id as its name) and to scontrol, and succeeded.
        assert job["JobState"] == "COMPLETED", job
        info = slurm_cluster.show_job(job["JobId"])
        assert info["JobName"] == run_id(log)
        gpus = info.get("TresPerJob", "") + info.get("TresPerNode", "")
        if job["rule"] in FIT_RULES:
            assert gpus.endswith("gpu:1"), (job["rule"], info)
        else:
            assert "gpu" not in gpus, (job["rule"], info)

    by_rule: dict[str, list[str]] = {}
    for job in jobs:
        by_rule.setdefault(job["rule"], []).append(job["wildcards"].removeprefix(f"{DATASET}_"))
    shards = run.shards()
    assert sorted(by_rule["fit_basic"]) == sorted(shards), "exactly one fit_basic job per shard"

    results = run.workdir / "results" / DATASET
    basic_reports = [results / "fit" / "basic" / f"{shard}.csv" for shard in shards]
    previous_failing = _failing_indices(basic_reports)
    for phase in ("extended", "until_threshold"):
        plan = json.loads((results / "fit" / phase / "plan.json").read_text())
        planned = {item["index"] for items in plan["jobs"].values() for item in items}
        assert planned == previous_failing, f"{phase} refines exactly the items that failed before it"
        assert sorted(by_rule.get(f"fit_{phase}", [])) == sorted(plan["jobs"]), f"one SLURM job per {phase} plan job"
        previous_failing = _failing_indices([results / "fit" / phase / f"{job}.csv" for job in plan["jobs"]])

    splits = {meta["split"] for meta in shards.values()}
    for split in splits:
        assert (results / "archive" / f"{split}.h5").stat().st_size > 0
    assert list((results / "reports").glob("*.csv")), "PSNR report tables"
    assert (run.workdir / "results" / "summary.md").exists()


def test_second_run_after_success_submits_no_job(slurm_cluster: SlurmCluster, runs: dict[str, Run]) -> None:
    """Rerunning a finished workflow with the same profile submits nothing."""
    again = run_snakemake(slurm_cluster, runs["A"].workdir, [*PROFILE_ARGS, TARGET], timeout=180)
    text = again.stdout + again.stderr
    assert "has been submitted with SLURM jobid" not in text
    assert "Nothing to be done" in text


def _assert_resumed(log_text: str, before: str, label: str) -> None:
    """The final attempt (``log_text``) reused every batch finished in ``before`` and fitted no batch twice.

    ``before`` is the shard's log when the interrupted job stopped. Snakemake starts a rerun job with a
    fresh log, so ``log_text`` holds the later attempt(s) only, or ``before`` + them where it appended.
    """
    done_before = {b for b, _, _ in batch_events(before)}
    assert done_before, f"{label}: no batch had finished before the interruption"
    after = batch_events(log_text[len(before):] if log_text.startswith(before) else log_text)
    reused_after = {b for b, _, kind in after if kind == "reused"}
    fitted_after = [b for b, _, kind in after if kind == "fitted"]
    n_batches = after[0][1] if after else 0
    assert done_before <= reused_after, f"{label}: finished batches {sorted(done_before)} were not all reused"
    assert not done_before & set(fitted_after), f"{label}: batches {sorted(done_before & set(fitted_after))} fitted again"
    assert len(fitted_after) == len(set(fitted_after)), f"{label}: a batch was fitted twice"
    assert reused_after | set(fitted_after) >= set(range(1, n_batches + 1)), f"{label}: the shard was not completed"


def test_cancelled_fitting_job_resumes_on_rerun(slurm_cluster: SlurmCluster, runs: dict[str, Run]) -> None:
    """scancel mid-shard + rerun --rerun-incomplete: finished batches are reused, not fitted again."""
    run = runs["B"]
    cancelled = run.notes["cancelled"]
    text = run.fit_log_text(cancelled["shard"])
    _assert_resumed(text, cancelled["log_at_cancel"], f"cancelled shard {cancelled['shard']}")
    jobs = _slurm_jobs_of_shard(slurm_cluster, run.logs[1], cancelled["shard"])
    assert jobs and jobs[-1]["JobState"] == "COMPLETED", jobs


def test_timed_out_job_is_retried_with_more_runtime(slurm_cluster: SlurmCluster, runs: dict[str, Run]) -> None:
    """A fitting job ended by its SLURM time limit is resubmitted with a longer limit and resumes its shard."""
    run = runs["B"]
    timed_out = run.notes["timed_out"]
    jobs = _slurm_jobs_of_shard(slurm_cluster, run.logs[1], timed_out["shard"])
    states = [job["JobState"] for job in jobs]
    assert states[-2:] == ["TIMEOUT", "COMPLETED"], states
    assert jobs[-2]["JobId"] == timed_out["job_id"]
    retry_limit = slurm_cluster.show_job(jobs[-1]["JobId"])["TimeLimit"]
    assert time_limit_minutes(retry_limit) > time_limit_minutes(timed_out["original_limit"]), (
        retry_limit, timed_out["original_limit"])
    text = run.fit_log_text(timed_out["shard"])
    _assert_resumed(text, timed_out["log_at_timeout"], f"timed-out shard {timed_out['shard']}")


def test_interrupted_run_archive_matches_uninterrupted(runs: dict[str, Run]) -> None:
    """Cancel, timeout and resume change nothing: run B's archives equal run A's (same items, same weights)."""
    from izoo.archive.layout import read_inr_file

    archives_a = sorted((runs["A"].workdir / "results" / DATASET / "archive").glob("*.h5"))
    assert archives_a
    for path_a in archives_a:
        a = read_inr_file(path_a)
        b = read_inr_file(runs["B"].workdir / "results" / DATASET / "archive" / path_a.name)
        keys = ["index", "item_id", "split", "label"]
        pd.testing.assert_frame_equal(a.items[keys].reset_index(drop=True), b.items[keys].reset_index(drop=True))
        assert a.params.keys() == b.params.keys()
        for name in a.params:
            np.testing.assert_allclose(b.params[name], a.params[name], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{path_a.name}: {name}")
