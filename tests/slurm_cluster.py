"""A real single-node SLURM cluster for the test suite (issue #6).

The tests run the unchanged ``profiles/slurm`` profile, i.e. the real
``snakemake-executor-plugin-slurm`` calling ``sbatch``/``squeue``/``scancel``,
so they need a real ``slurmctld`` + ``slurmd``. This module starts one on this
machine (or reuses one that already answers), fakes GPUs as GRES so the
profile's ``gpu`` requests are really scheduled, and stops only the daemons it
started, by PID.

Config, state, spool and logs live under one temporary directory; nothing in
/etc is written. Two system paths are used because SLURM insists on them:
munged's default socket in /run/munge (reused if a munged already answers
there) and slurmd's configless cache link /run/slurm/conf (removed on stop).
Configless mode is what lets ``srun`` inside a job find the cluster: the
snakemake jobstep plugin strips ``SLURM_CONF`` from the job environment.
Outside jobs, clients find the cluster through ``SLURM_CONF``; use
:attr:`SlurmCluster.env` (or :func:`snakemake_env`) for every subprocess.

Run ``python tests/slurm_cluster.py`` to keep a cluster up by hand (Ctrl-C stops it).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Jobs stay visible to squeue this long after they end. The executor plugin's
# squeue status mode needs >= 3x its first status-check delay, and the tests
# read finished jobs back with scontrol.
MIN_JOB_AGE_S = 3600
# Fake GPUs on the node: two concurrent test workflows get two fitting jobs each.
DEFAULT_FAKE_GPUS = 4
# The node is declared at least this big (SlurmdParameters=config_overrides), like one GPU node of
# a real cluster, so the unchanged profiles/slurm requests (cpus_per_gpu=4, mem_mb=16000*attempt)
# are schedulable on a small test machine. Without cgroups nothing enforces these numbers.
MIN_NODE_CPUS = 32
MIN_NODE_MEMORY_MB = 131072
REQUIRED_PROGRAMS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")
INSTALL_HINT = "install it as root: apt-get install -y slurm-wlm munge (.ci/run does this)"


@dataclass
class SlurmCluster:
    """A reachable SLURM cluster and the environment its clients need."""

    env: dict[str, str]
    node: str
    partition: str
    gpus: int
    base_dir: Path | None = None
    started: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def reused(self) -> bool:
        """True when this harness did not start the daemons (someone else's cluster)."""
        return not self.started

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM client command (sbatch, squeue, scontrol, ...) against this cluster."""
        return subprocess.run(
            list(args), env=self.env, check=check, timeout=timeout, capture_output=True, text=True
        )

    def show_job(self, job_id: str | int) -> dict[str, str]:
        """Return ``scontrol show job`` fields of one job (kept for MinJobAge after it ends)."""
        out = self.run("scontrol", "show", "job", "--oneliner", str(job_id)).stdout
        return parse_scontrol_record(out)

    def jobs(self, name: str | None = None) -> list[dict[str, str]]:
        """Return all jobs squeue knows (any state), optionally only those with this job name."""
        args = ["squeue", "--states=all", "--noheader", "--format=%i|%j|%T|%k"]
        if name:
            args += ["--name", name]
        rows = []
        for line in self.run(*args).stdout.splitlines():
            job_id, job_name, state, comment = line.split("|", 3)
            rows.append({"JobId": job_id, "JobName": job_name, "JobState": state, "Comment": comment})
        return rows

    def wait_until_idle(self, timeout: float = 60) -> None:
        """Wait until the node accepts work (idle or mixed), else raise with the daemon logs."""
        deadline = time.monotonic() + timeout
        state = "unreachable"
        while time.monotonic() < deadline:
            for name, proc in self.started.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.daemon_logs()}")
            res = self.run("sinfo", "--noheader", "--nodes", self.node, "--format=%T", check=False)
            state = res.stdout.strip() or res.stderr.strip()
            if res.returncode == 0 and state.rstrip("*") in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM node {self.node} not idle after {timeout:.0f} s (state: {state})\n{self.daemon_logs()}")

    def daemon_logs(self, lines: int = 20) -> str:
        """Return the tail of the logs of the daemons this harness started (for failure messages)."""
        return "" if self.base_dir is None else _tails(self.base_dir, lines)


def _tails(base: Path, lines: int = 20) -> str:
    """Return the last lines of every daemon log under ``base/log``."""
    chunks = []
    for log in sorted((base / "log").glob("*.log")) + sorted((base / "log").glob("*.stdout")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        chunks.append(f"--- {log} ---\n" + "\n".join(tail))
    return "\n".join(chunks)


def parse_scontrol_record(text: str) -> dict[str, str]:
    """Parse one ``scontrol show ... --oneliner`` line into a dict (values may contain '=')."""
    record: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep:
            record[key] = value
    return record


def _which(program: str) -> str | None:
    """Full path of a program on PATH or in the sbin directories (daemons live there, often off PATH)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    return shutil.which(program, path=search)


def unavailable_reason() -> str | None:
    """Say why this machine cannot start a SLURM cluster, or None when it can."""
    missing = [p for p in REQUIRED_PROGRAMS if _which(p) is None]
    if missing:
        return f"SLURM/munge programs not installed ({', '.join(missing)}): {INSTALL_HINT}"
    if os.geteuid() != 0:
        return f"starting slurmd needs root (running as {getpass.getuser()})"
    return None


def _reachable_cluster(env: Mapping[str, str]) -> SlurmCluster | None:
    """Return the already-running cluster the given environment points at, if it has GPU GRES."""
    if shutil.which("sinfo") is None:
        return None
    try:
        res = subprocess.run(
            ["sinfo", "--noheader", "--format=%P|%N|%G|%T"], env=dict(env),
            capture_output=True, text=True, timeout=10,
        )
    except subprocess.TimeoutExpired:
        return None
    if res.returncode != 0:
        return None
    for line in res.stdout.splitlines():
        partition, node, gres, state = line.split("|", 3)
        gpus = _gpu_count(gres)
        if gpus and state.rstrip("*") in ("idle", "mixed", "allocated"):
            return SlurmCluster(env=dict(env), node=node, partition=partition.rstrip("*"), gpus=gpus)
    return None


def _gpu_count(gres: str) -> int:
    """Number of GPUs in a sinfo GRES string such as ``gpu:2`` or ``gpu:a100:4(S:0)``."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def _free_port() -> int:
    """Ask the kernel for a free TCP port (so a user's cluster on 6817/6818 never clashes)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_memory_mb() -> int:
    """Memory to advertise for the node: 80 % of the machine's, but at least a GPU node's."""
    total_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return max(MIN_NODE_MEMORY_MB, int(total_kb / 1024 * 0.8))


def _write_config(base: Path, gpus: int) -> tuple[Path, str, str, int]:
    """Write slurm.conf + gres.conf + fake GPU devices under ``base``; return (conf, node, partition, ctld port)."""
    node = socket.gethostname().split(".")[0]
    partition = "izoo"
    for sub in ("ctld", "spool", "log", "dev"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    devices = []
    for k in range(gpus):
        dev = base / "dev" / f"fakegpu{k}"
        if not dev.exists():
            # Character device 1:3 is /dev/null; slurmd only needs a real char
            # device to hand out, and a File= entry is required (Count= alone
            # leaves the node INVAL).
            os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
        devices.append(dev)
    (base / "gres.conf").write_text(
        f"NodeName={node} Name=gpu File={base / 'dev'}/fakegpu[0-{gpus - 1}]\n"
    )
    cpus = max(MIN_NODE_CPUS, os.cpu_count() or 1)
    ctld_port = _free_port()
    conf = base / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "# Written by tests/slurm_cluster.py: single-node test cluster with fake GPUs.",
                "ClusterName=izootest",
                f"SlurmctldHost={node}(127.0.0.1)",
                f"SlurmctldPort={ctld_port}",
                # Configless: slurmd fetches this file from slurmctld and caches it where
                # client commands inside jobs look (/run/slurm/conf), because the
                # snakemake jobstep plugin strips SLURM_CONF from the job's srun.
                "SlurmctldParameters=enable_configless",
                f"SlurmdPort={_free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"StateSaveLocation={base / 'ctld'}",
                f"SlurmdSpoolDir={base / 'spool'}",
                f"SlurmctldPidFile={base / 'slurmctld.pid'}",
                f"SlurmdPidFile={base / 'slurmd.pid'}",
                f"SlurmctldLogFile={base / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={base / 'log' / 'slurmd.log'}",
                # No cgroup in test containers: track processes by parent PID.
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "AccountingStorageType=accounting_storage/none",
                "SchedulerType=sched/backfill",
                "MpiDefault=none",
                "ReturnToService=2",
                # Accept the declared CPUs/memory even where the machine is smaller.
                "SlurmdParameters=config_overrides",
                f"MinJobAge={MIN_JOB_AGE_S}",
                "InactiveLimit=0",
                "GresTypes=gpu",
                f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_node_memory_mb()} "
                f"Gres=gpu:{gpus} State=UNKNOWN",
                f"PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    return conf, node, partition, ctld_port


def _munge_answers(socket_path: Path | None = None) -> bool:
    """True when a munged answers on the given (default: system) socket."""
    argv = ["munge", "--no-input"] + ([f"--socket={socket_path}"] if socket_path else [])
    return subprocess.run(argv, capture_output=True).returncode == 0


def _start_munged(base: Path) -> subprocess.Popen | None:
    """Make sure munged answers on the system socket; start one (as user munge) only if none does.

    The system socket is required: in configless mode slurmd authenticates to
    slurmctld before it has read any AuthInfo setting.
    """
    if _munge_answers():
        return None
    user = pwd.getpwnam("munge")
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chown(run_dir, user.pw_uid, user.pw_gid)
    # munged insists that every client can traverse its socket directory.
    run_dir.chmod(0o755)
    munge_dir = base / "munge"
    munge_dir.mkdir(exist_ok=True)
    os.chown(munge_dir, user.pw_uid, user.pw_gid)
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        # No packaged key: a fresh random one, since this cluster only talks to itself.
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        os.chown(key, user.pw_uid, user.pw_gid)
    log = base / "log" / "munged.log"
    log.touch()
    os.chown(log, user.pw_uid, user.pw_gid)
    argv = [
        _which("munged") or "munged", "--foreground", f"--key-file={key}", f"--log-file={log}",
        f"--pid-file={munge_dir / 'munged.pid'}", f"--seed-file={munge_dir / 'munged.seed'}",
    ]
    # In the foreground munged reports startup errors on stderr only.
    with open(base / "log" / "munged.stderr.log", "ab") as err:
        proc = subprocess.Popen(
            argv, user=user.pw_uid, group=user.pw_gid, extra_groups=[],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"munged exited with {proc.returncode}:\n{_tails(base)}")
        if _munge_answers():
            return proc
        time.sleep(0.2)
    _stop(proc, "munged")
    raise RuntimeError(f"munged did not answer on its socket in /run/munge:\n{_tails(base)}")


def _stop(proc: subprocess.Popen, name: str, timeout: float = 20) -> None:
    """Stop one daemon this harness started: SIGTERM by PID, SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"slurm_cluster: {name} (pid {proc.pid}) ignored SIGTERM, killing it", file=sys.stderr)
        proc.kill()
        proc.wait(timeout=timeout)


def start_cluster(base_dir: Path, gpus: int = DEFAULT_FAKE_GPUS, timeout: float = 60) -> SlurmCluster:
    """Start munged, slurmctld and slurmd in the foreground under ``base_dir`` and wait for an idle node."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    base = Path(base_dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    # munged runs as user munge and must reach its socket dir under base.
    base.chmod(0o755)
    (base / "log").mkdir(exist_ok=True)
    started: dict[str, subprocess.Popen] = {}
    try:
        munged = _start_munged(base)
        if munged is not None:
            started["munged"] = munged
        conf, node, partition, ctld_port = _write_config(base, gpus)
        plain_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SRUN_"))}
        env = {**plain_env, "SLURM_CONF": str(conf)}
        for name, argv, daemon_env in (
            # -i: ignore saved state from an earlier run of the same directory.
            ("slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-i", "-f", str(conf)], env),
            ("slurmd", [_which("slurmd") or "slurmd", "-D", "--conf-server", f"127.0.0.1:{ctld_port}"], plain_env),
        ):
            with open(base / "log" / f"{name}.stdout", "ab") as out:
                started[name] = subprocess.Popen(
                    argv, env=daemon_env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        cluster = SlurmCluster(env=env, node=node, partition=partition, gpus=gpus, base_dir=base, started=started)
        cluster.wait_until_idle(timeout)
        return cluster
    except BaseException:
        for name in reversed(list(started)):
            _stop(started[name], name)
        raise


def stop_cluster(cluster: SlurmCluster) -> None:
    """Cancel this harness's leftover jobs and stop only the daemons it started (no-op when reused)."""
    if cluster.reused:
        return
    with contextlib.suppress(Exception):
        cluster.run("scancel", "--full", "--partition", cluster.partition, "--state=RUNNING", check=False)
        cluster.run("scancel", "--partition", cluster.partition, "--state=PENDING", check=False)
    # slurmd first so no job step is orphaned while slurmctld is still up.
    for name in ("slurmd", "slurmctld", "munged"):
        proc = cluster.started.get(name)
        if proc is not None:
            _stop(proc, name)
    # slurmd links the configless cache here; drop the link once it points into our removed state.
    cache_link = Path("/run/slurm/conf")
    if cluster.base_dir is not None and cache_link.is_symlink():
        if Path(os.readlink(cache_link)).is_relative_to(cluster.base_dir):
            cache_link.unlink()


@contextlib.contextmanager
def running_cluster(base_dir: Path | None = None, gpus: int = DEFAULT_FAKE_GPUS) -> Iterator[SlurmCluster]:
    """Yield a running cluster: reuse the one ``SLURM_CONF``/defaults point at, else start (and later stop) one."""
    existing = _reachable_cluster(os.environ)
    if existing is not None:
        yield existing
        return
    owned_tmp = None
    if base_dir is None:
        owned_tmp = tempfile.mkdtemp(prefix="izoo-slurm-")
        base_dir = Path(owned_tmp)
    try:
        cluster = start_cluster(Path(base_dir), gpus=gpus)
    except BaseException:
        if owned_tmp is not None:
            shutil.rmtree(owned_tmp, ignore_errors=True)
        raise
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
        if owned_tmp is not None:
            shutil.rmtree(owned_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Session fixture: a running single-node SLURM with fake GPUs, or a visible skip/fail saying why not."""
    if _reachable_cluster(os.environ) is None:
        reason = unavailable_reason()
        if reason:
            if os.environ.get("CI") == "true" and os.geteuid() == 0:
                # CI runs as root on a machine where .ci/run installs SLURM: not running it is a failure.
                pytest.fail(f"SLURM tests cannot run in CI: {reason}")
            pytest.skip(f"SLURM tests need a local SLURM cluster: {reason}")
    with running_cluster() as cluster:
        yield cluster


# "Job 3 has been submitted with SLURM jobid 17 (log: /x/.snakemake/slurm_logs/rule_fit/a/17.log)."
_SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: ([^)]*)\)")
_RUN_ID = re.compile(r"SLURM run ID: (\S+)")
# The plugin's sbatch --comment: "rule_<rule>" or "rule_<rule>_wildcards_<values joined by _>".
_COMMENT = re.compile(r"^rule_(\w+?)(?:_wildcards_(.*))?$")


def run_id(snakemake_log: str) -> str:
    """The executor plugin's run id (also every job's SLURM job name) from a snakemake log."""
    match = _RUN_ID.search(snakemake_log)
    if match is None:
        raise AssertionError("snakemake log has no 'SLURM run ID' line: was the slurm executor used?")
    return match.group(1)


def submitted_jobs(cluster: SlurmCluster, snakemake_log: str) -> list[dict[str, str]]:
    """SLURM jobs a snakemake run submitted, each with its squeue state, rule and wildcard values."""
    known = {job["JobId"]: job for job in cluster.jobs(name=run_id(snakemake_log))} if _SUBMITTED.search(snakemake_log) else {}
    jobs = []
    for match in _SUBMITTED.finditer(snakemake_log):
        job = dict(known.get(match.group(2), {"JobId": match.group(2), "JobState": "NOT_IN_SQUEUE", "Comment": ""}))
        comment = _COMMENT.match(job["Comment"])
        job["rule"] = comment.group(1) if comment else ""
        job["wildcards"] = (comment.group(2) or "") if comment else ""
        job["snakemake_jobid"] = match.group(1)
        job["slurm_log"] = match.group(3)
        jobs.append(job)
    return jobs


def snakemake_env(cluster: SlurmCluster) -> dict[str, str]:
    """Environment for a snakemake run against ``cluster`` with this interpreter's venv first on PATH."""
    env = dict(cluster.env)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start_snakemake(cluster: SlurmCluster, workdir: Path, args: list[str], log_name: str) -> subprocess.Popen:
    """Start ``python -m snakemake <args>`` in ``workdir`` in the background; its output goes to workdir/log_name."""
    with open(workdir / log_name, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "snakemake", *args], cwd=workdir, env=snakemake_env(cluster),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_default_sigint,
        )


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C acts by default, so Python installs its KeyboardInterrupt handler.

    A pytest started in the background by a non-interactive shell (``pytest … &``) has SIGINT ignored, children
    inherit that, and Python then never turns SIGINT into KeyboardInterrupt: snakemake would not take the Ctrl-C
    the tests send it and run on to the end.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


#: what snakemake logs once it has taken a Ctrl-C (job_scheduler.py)
TERMINATING_LINE = "Terminating processes on user request"


def interrupt_snakemake(proc: subprocess.Popen, log_path: Path, timeout: float = 180, resend_after: float = 15) -> None:
    """Ctrl-C a background snakemake, as a user does: again if it has not taken the first one, then wait for it.

    Snakemake 9's log handler swallows a KeyboardInterrupt that arrives while it writes a log record (its
    ``ColorizingTextHandler.emit`` passes on KeyboardInterrupt), so one SIGINT during a long message (a failed
    job's log) is lost and the run goes on. It is sent again until the log says snakemake is terminating.
    """
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        taken_by = time.monotonic() + resend_after
        while proc.poll() is None and time.monotonic() < min(taken_by, deadline):
            if TERMINATING_LINE in log_path.read_text(errors="replace"):
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                return
            time.sleep(0.5)
    proc.wait(timeout=1)


def run_snakemake(
    cluster: SlurmCluster, workdir: Path, args: list[str], timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``python -m snakemake <args>`` in ``workdir`` against the cluster; log kept in workdir/snakemake-*.log."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=workdir, env=snakemake_env(cluster),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )
    runs = len(list(workdir.glob("snakemake-run-*.log")))
    (workdir / f"snakemake-run-{runs + 1}.log").write_text(proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}"
        )
    return proc


def main() -> int:
    """Keep a test cluster up until Ctrl-C/SIGTERM; print how to point clients at it."""
    stop = False

    def _request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    with running_cluster() as cluster:
        where = "reusing an existing cluster" if cluster.reused else f"started in {cluster.base_dir}"
        print(f"SLURM up ({where}); node {cluster.node}, partition {cluster.partition}, {cluster.gpus} fake GPUs")
        print(f"export SLURM_CONF={cluster.env.get('SLURM_CONF', '/etc/slurm/slurm.conf')}", flush=True)
        while not stop:
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
