"""A full disk: writers stop with one line naming the file, leave no partial file, and lose nothing written before.

Uses a real tiny filesystem (a 1 MiB tmpfs mounted by the test, root only) rather than a mock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from izoo.archive import layout
from izoo.errors import IzooError


def _items(n: int, split: str = "train") -> pd.DataFrame:
    return pd.DataFrame({"index": range(n), "item_id": [f"{split}/{k}" for k in range(n)], "source_id": "src",
                         "split": split, "label": 0, "psnr": 31.0, "phase": "basic", "iterations": 10,
                         "seconds": 0.1, "passed": True})


def _params(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"layer0.weight": rng.standard_normal((n, 64, 2), dtype=np.float32),
            "layer0.bias": rng.standard_normal((n, 64), dtype=np.float32),
            "layer1.weight": rng.standard_normal((n, 3, 64), dtype=np.float32),
            "layer1.bias": rng.standard_normal((n, 3), dtype=np.float32)}


ATTRS = layout.base_attrs("siren", {"depth": 2, "width": 64, "w0": 30.0}, gate_psnr=30.0, dataset="d", split="train")


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB filesystem; skipped (with the reason) where mounting is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tiny tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_write_on_full_disk_is_one_line_and_keeps_earlier_files(tiny_fs):
    small = tiny_fs / "small.h5"
    layout.write_inr_file(small, _params(4), _items(4), ATTRS)  # fits
    before = small.read_bytes()
    target = tiny_fs / "big.h5"
    with pytest.raises(IzooError) as err:
        layout.write_inr_file(target, _params(2000), _items(2000), ATTRS)
    msg = str(err.value)
    assert "\n" not in msg and str(target) in msg and "disk space" in msg and "free disk space" in msg
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["small.h5"]  # no partial or temp file left
    assert small.read_bytes() == before  # what was written before is untouched


def test_merge_on_full_disk_fails_cleanly_from_the_cli(tmp_path, tiny_fs):
    shard = tmp_path / "train-00000.h5"
    layout.write_inr_file(shard, _params(2000), _items(2000), ATTRS)
    manifest = tmp_path / "manifest.csv"
    items = _items(2000)
    pd.DataFrame({"index": items["index"], "split": "train", "item_id": items["item_id"], "label": 0,
                  "source_id": "src", "shard": "train-00000"}).to_csv(manifest, index=False)
    out = tiny_fs / "train.h5"
    proc = subprocess.run([sys.executable, "-m", "izoo", "merge", "--dataset", "d", "--manifest", str(manifest),
                           "--split", "train", "--shards", str(shard), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1 and str(out) in error_lines[0] and "disk space" in error_lines[0], proc.stderr
    assert not list(tiny_fs.iterdir())  # no archive that looks finished, no temp file
    assert layout.read_inr_file(shard).params["layer0.weight"].shape == (2000, 64, 2)  # input untouched


def test_in_batch_checkpoint_on_full_disk_is_one_line_from_the_cli(tmp_path, tiny_fs):
    """torch.save's own error on ENOSPC does not say so; izoo fit must still give one line, not a traceback."""
    from test_fitting_cli import _dataset, _fit_args

    cfg, manifest = _dataset(tmp_path, iterations=40)
    cfg["model"]["width"] = 256   # the checkpoint of a 2-item batch (weights + Adam moments) is ~1.6 MB > 1 MiB
    args = _fit_args(cfg, manifest, tmp_path)
    args[args.index("--workdir") + 1] = str(tiny_fs / "work")
    proc = subprocess.run([sys.executable, "-m", "izoo", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "error" in line]
    ckpt = tiny_fs / "work" / "job.ckpt"
    assert len(error_lines) == 1 and str(ckpt) in error_lines[0] and "no space left" in error_lines[0], proc.stderr
    assert "free disk space" in error_lines[0]
    assert [p.name for p in (tiny_fs / "work").iterdir()] == []   # no temp file left behind
