"""Run the real workflow (Snakemake CLI) in a scratch copy of the repository's workflow files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKFLOW_FILES = ("Snakefile", "workflow", "config.yaml", "config", "profiles", "envs")
TINY_OVERLAY = REPO / "tests" / "workflow" / "tiny.yaml"


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow definition (not results) into ``dest`` and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, dirs_exist_ok=True)
        else:
            shutil.copy(src, dest / name)
    return dest


def workflow_env() -> dict[str, str]:
    """Environment whose PATH finds this interpreter's ``izoo`` and ``snakemake``."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def snakemake_cmd(*args: str, profile: str = "local", overlays: tuple[Path, ...] = (TINY_OVERLAY,)) -> list[str]:
    """The command line of a Snakemake run with the demo config plus ``overlays`` (``args``: targets, flags)."""
    configfiles = ["config/demo.yaml", *[str(p) for p in overlays]]
    # targets and flags go before --configfile, which swallows every word after it
    return [sys.executable, "-m", "snakemake", "--profile", f"profiles/{profile}", *args, "--configfile", *configfiles]


def run_snakemake(work: Path, *args: str, timeout: float = 900, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run Snakemake in ``work``; on failure (when ``check``) raise with the tail of its output."""
    proc = subprocess.run(snakemake_cmd(*args, **kwargs), cwd=work, env=workflow_env(), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted((work / "logs").rglob("*.log"))[-6:]) \
            if (work / "logs").exists() else ""
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n{logs}")
    return proc
