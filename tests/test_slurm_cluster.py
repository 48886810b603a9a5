"""The SLURM test harness itself: a real single-node cluster whose fake GPUs the executor plugin schedules."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest

from slurm_cluster import SlurmCluster, _gpu_count, parse_scontrol_record, run_snakemake, submitted_jobs

TOY = Path(__file__).parent / "slurm" / "toy"


def test_parse_scontrol_record_keeps_values_with_equals() -> None:
    """scontrol one-liners split into fields; values such as TRES lists keep their '='."""
    record = parse_scontrol_record("JobId=7 JobName=abc TRES=cpu=1,mem=100M,gres/gpu=1 JobState=RUNNING\n")
    assert record == {"JobId": "7", "JobName": "abc", "TRES": "cpu=1,mem=100M,gres/gpu=1", "JobState": "RUNNING"}


def test_gpu_count_reads_sinfo_gres() -> None:
    """GPU counts come from sinfo GRES strings with or without a type and socket suffix."""
    assert _gpu_count("gpu:2") == 2
    assert _gpu_count("gpu:a100:4(S:0-1),shard:8") == 4
    assert _gpu_count("(null)") == 0


@pytest.mark.slurm
def test_slurm_cluster_node_is_idle_with_fake_gpus(slurm_cluster: SlurmCluster) -> None:
    """The harness's node is up, schedulable and advertises GPUs as GRES."""
    node = parse_scontrol_record(slurm_cluster.run("scontrol", "show", "node", "--oneliner", slurm_cluster.node).stdout)
    assert node["State"].split("+")[0] in ("IDLE", "MIXED", "ALLOCATED"), node["State"]
    assert _gpu_count(node["Gres"]) == slurm_cluster.gpus >= 1
    assert slurm_cluster.run("scontrol", "ping").returncode == 0


@pytest.mark.slurm
def test_slurm_cluster_runs_gpu_jobs(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """A toy workflow runs through the SLURM executor plugin; its gpu=1 jobs get a GPU each from SLURM."""
    workdir = tmp_path / "toy"
    shutil.copytree(TOY, workdir)
    first = run_snakemake(slurm_cluster, workdir, ["--profile", "profile"], timeout=240)
    log = first.stdout + first.stderr

    jobs = submitted_jobs(slurm_cluster, log)
    assert sorted(job["rule"] for job in jobs) == ["fit", "fit", "fit", "gather"], jobs
    for job in jobs:
        info = slurm_cluster.show_job(job["JobId"])
        assert info["JobState"] == "COMPLETED", info
        if job["rule"] == "fit":
            # Requested one GPU; that SLURM allocated it shows in the job's CUDA_VISIBLE_DEVICES below.
            requested = info.get("TresPerJob", "") + info.get("TresPerNode", "")
            assert requested.endswith("gpu:1"), info

    summary = json.loads((workdir / "out" / "summary.json").read_text())
    fits = summary["jobs"]
    fit_job_ids = {job["JobId"] for job in jobs if job["rule"] == "fit"}
    assert {row["slurm_job_id"] for row in fits} == fit_job_ids
    assert summary["gather_slurm_job_id"] not in fit_job_ids
    valid_devices = {str(k) for k in range(slurm_cluster.gpus)}
    for row in fits:
        assert row["cuda_visible_devices"] in valid_devices, row
    for one, other in itertools.combinations(fits, 2):
        overlapped = one["started"] < other["ended"] and other["started"] < one["ended"]
        if overlapped:
            # Two jobs running at once must hold different GPUs.
            assert one["cuda_visible_devices"] != other["cuda_visible_devices"], (one, other)

    again = run_snakemake(slurm_cluster, workdir, ["--profile", "profile"], timeout=120)
    again_log = again.stdout + again.stderr
    assert "has been submitted with SLURM jobid" not in again_log
    assert "Nothing to be done" in again_log


def test_unavailable_reason_names_missing_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a SLURM daemon installed the harness says which program is missing and how to install it."""
    import slurm_cluster

    real_which = slurm_cluster._which
    monkeypatch.setattr(slurm_cluster, "_which", lambda prog: None if prog == "slurmd" else real_which(prog))
    reason = slurm_cluster.unavailable_reason()
    assert reason is not None and "(slurmd)" in reason and "apt-get install" in reason
