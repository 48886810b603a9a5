"""The prepared GPU run (benchmarks/gpu_suite.py) keeps working: its quick CPU mode runs every part."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_gpu_suite_quick_cpu_runs_every_part_and_ends_with_summary():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "gpu_suite.py", "--quick", "--device", "cpu"], cwd=BENCH, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "FAILED" not in out, out
    for part in ("cifar", "gate", "large", "nerf", "jax", "oom", "meta"):
        assert f"-- part {part}:" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("SUMMARY gpu device=cpu-")
    for key in ("cifar_fits_per_s_1000=", "cifar_gate_fits_per_s=", "imagenet_fits_per_s=", "nerf_scenes_per_h="):
        value = last.split(key)[1].split()[0]
        assert value.endswith("(quick)") and float(value.removesuffix("(quick)")) > 0, last
    assert "|ΔPSNR| vs loop 0.000 dB" in out   # batched and one-at-a-time fits agree
    assert "learned init: 8 items to 30 dB" in out and "mean steps ratio SIREN/learned" in out
