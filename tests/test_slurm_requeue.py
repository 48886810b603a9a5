"""A SLURM job requeued mid-shard (``scontrol requeue``; preemption with PreemptMode=REQUEUE does the same)
resumes from its work dir, on the real single-node SLURM of the test suite and the unchanged profiles/slurm.

SLURM ends the running job (SIGTERM, then SIGKILL after KillWait) and runs its batch script again under the
same job id; the fitter saves at the SIGTERM and the second run of the job goes on from the finished batches.
"""

from __future__ import annotations

import pytest

from slurm_cluster import SlurmCluster, interrupt_snakemake, start_snakemake
from test_slurm_workflow import (DATASET, PROFILE_ARGS, RUN_TIMEOUT_S, STOPPED_LINE, Run, _assert_resumed,
                                 _copy_workflow, _slurm_jobs_of_shard, _wait_for, batch_events)

pytestmark = pytest.mark.slurm
SHARD = "train-00000"


def test_requeued_fitting_job_resumes_from_its_work_dir(slurm_cluster: SlurmCluster, tmp_path) -> None:
    run = Run(_copy_workflow(tmp_path / "R"))
    target = f"results/{DATASET}/fit/basic/{SHARD}.h5"
    proc = start_snakemake(slurm_cluster, run.workdir, [*PROFILE_ARGS, target], "snakemake-R.log")
    log_path = run.workdir / "snakemake-R.log"
    try:
        def running_job_with_a_finished_batch() -> str | None:
            if "SLURM run ID" not in log_path.read_text(errors="replace"):
                return None
            fitted = [b for b, _, kind in batch_events(run.fit_log_text(SHARD)) if kind == "fitted"]
            running = [j for j in _slurm_jobs_of_shard(slurm_cluster, log_path.read_text(errors="replace"), SHARD)
                       if j["JobState"] == "RUNNING"]
            return running[-1]["JobId"] if fitted and running else None

        job_id = _wait_for("the shard's job to finish a batch", running_job_with_a_finished_batch, timeout=300,
                           alive=proc)
        slurm_cluster.run("scontrol", "requeue", job_id)
        _wait_for("the fitter to stop at the requeue", lambda: STOPPED_LINE.search(run.fit_log_text(SHARD)),
                  timeout=90, alive=proc)
        log_at_requeue = run.fit_log_text(SHARD)
        proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        interrupt_snakemake(proc, log_path)
    text = log_path.read_text(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "stopped: signal SIGTERM" in log_at_requeue and "(exit 75)" in log_at_requeue, log_at_requeue
    info = slurm_cluster.show_job(job_id)
    assert int(info["Restarts"]) >= 1 and info["JobState"] == "COMPLETED", info   # the same job, run again
    jobs = _slurm_jobs_of_shard(slurm_cluster, text, SHARD)
    assert [j["JobId"] for j in jobs] == [job_id], jobs   # SLURM reran it; snakemake submitted nothing new
    _assert_resumed(run.fit_log_text(SHARD), log_at_requeue, f"requeued shard {SHARD}")
    assert (run.workdir / target).exists() and (run.workdir / target.replace(".h5", ".csv")).exists()
