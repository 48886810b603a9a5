"""``izoo fit`` / ``izoo plan-refinement`` as the workflow calls them: outputs, exit codes, signals, deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import izoo.datasets  # noqa: F401  (imported up front so the deadline test times fitting, not imports)
from izoo.archive import layout
from izoo.cli import main
from izoo.fitting.shard import StopControl



def _dataset(tmp_path: Path, n: int = 4, iterations: int = 20) -> tuple[dict, Path]:
    """A folder-format dataset of ``n`` 6×6 PNGs, its config and a hand-written manifest."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        cls = "a" if i % 2 == 0 else "b"
        path = tmp_path / "src" / "train" / cls / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(path)
        rows.append({"index": i, "split": "train", "item_id": f"train/{cls}/img{i}", "label": i % 2,
                     "source_id": f"train/{cls}/img{i}.png", "shard": "train-00000"})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    cfg = {"source": {"format": "folder", "root": str(tmp_path / "src"), "splits": ["train"], "on_bad_item": "error"},
           "model": {"family": "siren", "depth": 3, "width": 8, "w0": 30, "init": "siren"},
           "seed": {"mode": "shared", "value": 42},
           "fit": {"batch_size": 2, "iterations": iterations, "lr": 1e-2, "lr_min": 1e-4, "gate_psnr": 60.0,
                   "check_every": 10, "checkpoint_every": 20, "device": "cpu", "compile": "off",
                   "extended": {"factor": 1, "patience": 10}},
           "refine_job_size": 3}
    return cfg, manifest


def _fit_args(cfg, manifest, tmp_path, phase="basic", job=None, extra=()):
    name = job or "train-00000"
    args = ["fit", "--dataset", "demo", "--dataset-config", json.dumps(cfg), "--manifest", str(manifest),
            "--phase", phase, "--workdir", str(tmp_path / "work" / phase / name),
            "--out-weights", str(tmp_path / "fit" / phase / f"{name}.h5"),
            "--out-report", str(tmp_path / "fit" / phase / f"{name}.csv"), *extra]
    if job is None:
        args += ["--shard", "train-00000"]
    else:
        args += ["--plan", str(tmp_path / "fit" / phase / "plan.json"), "--job", job]
    return args


def test_fit_plan_refine_round_trip(tmp_path, capsys):
    cfg, manifest = _dataset(tmp_path)
    assert main(_fit_args(cfg, manifest, tmp_path)) == 0
    err = capsys.readouterr().err
    assert "izoo-fit: group 1/2 fitted (2 items)" in err and "izoo-fit: group 2/2 fitted (2 items)" in err
    report = pd.read_csv(tmp_path / "fit/basic/train-00000.csv")
    assert list(report.columns) == ["index", "item_id", "split", "label", "shard", "phase", "psnr_before",
                                    "psnr_after", "iterations", "seconds", "passed"]
    assert (~report["passed"]).all() and (report["iterations"] == 20).all()
    basic = layout.read_inr_file(tmp_path / "fit/basic/train-00000.h5")
    assert basic.params["layer0.weight"].shape == (4, 8, 2) and basic.params["layer2.bias"].shape == (4, 3)
    assert basic.attrs["architecture"]["layer_shapes"]["layer1.weight"] == [8, 8]
    assert basic.attrs["dataset"] == "demo" and not basic.attrs["tf32"] and basic.attrs["device"] == "cpu"
    assert basic.attrs["coordinate_convention"] and basic.attrs["normalisation"]["mean"] == [0.485, 0.456, 0.406]

    assert main(["plan-refinement", "--dataset", "demo", "--dataset-config", json.dumps(cfg), "--phase", "extended",
                 "--reports", str(tmp_path / "fit/basic/train-00000.csv"),
                 "--out", str(tmp_path / "fit/extended/plan.json")]) == 0
    plan = json.loads((tmp_path / "fit/extended/plan.json").read_text())
    assert plan["n_failing"] == 4 and [len(v) for v in plan["jobs"].values()] == [3, 1]

    assert main(_fit_args(cfg, manifest, tmp_path, "extended", "job-0001")) == 0
    ext = layout.read_inr_file(tmp_path / "fit/extended/job-0001.h5")
    ext_report = pd.read_csv(tmp_path / "fit/extended/job-0001.csv")
    assert ext.items["index"].tolist() == [3] and ext_report["shard"].tolist() == ["train-00000"]
    assert ext.items["iterations"].tolist() == [20 + int(ext_report["iterations"][0])]

    # a job that is not in the plan is a one-line error, exit 2
    assert main(_fit_args(cfg, manifest, tmp_path, "extended", "job-0009")) == 2
    assert "job 'job-0009' is not in the plan" in capsys.readouterr().err


def test_runtime_deadline_saves_and_exits_75(tmp_path, capsys):
    cfg, manifest = _dataset(tmp_path, iterations=100000)
    # 0.02 min = 1.2 s limit: the job stops itself at 0.8 × 1.2 s, inside the first (endless) batch
    assert main(_fit_args(cfg, manifest, tmp_path, extra=["--runtime-minutes", "0.02"])) == 75
    err = capsys.readouterr().err
    assert "stopped: runtime limit" in err and "rerun the same command to resume" in err
    assert (tmp_path / "work/basic/train-00000/job.ckpt").exists()
    assert not (tmp_path / "fit/basic/train-00000.h5").exists()


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_exits_75_and_resumes(tmp_path, signum):
    """SIGTERM (SLURM) and SIGINT (Ctrl-C) both save the in-flight batch and exit 75, no traceback."""
    cfg, manifest = _dataset(tmp_path, iterations=1000)
    work = tmp_path / "work/basic/train-00000"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "izoo", *_fit_args(cfg, manifest, tmp_path)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "progress " in line:   # the first group of finished items is in the work dir
            deadline = time.monotonic() + 60
            while not (work / "job.ckpt").exists() and time.monotonic() < deadline:
                time.sleep(0.01)   # signal once the later items have a checkpoint to resume from
            proc.send_signal(signum)
            break
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=120) == 75, "".join(lines)
    assert any(f"job interrupted (signal {signum.name})" in line for line in lines), "".join(lines)
    assert not any("Traceback" in line for line in lines), "".join(lines)
    assert (work / "group-00000.h5").exists() and (work / "job.ckpt").exists()

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "finished group(s) of" in done.stderr and "reused from work dir" in done.stderr
    # the log says the items in flight went on from the checkpoint instead of starting over
    assert f"job resumed from its checkpoint {work / 'job.ckpt'}" in done.stderr and "job fitted" in done.stderr
    assert (tmp_path / "fit/basic/train-00000.h5").exists() and not (work / "job.ckpt").exists()


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_sigusr1_and_deadline_request_a_stop():
    stop = StopControl().install()
    try:
        assert not stop.should_stop()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.should_stop() and stop.reason == "signal SIGUSR1"
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGUSR1) != stop._handle
    # Ctrl-C asks for a stop too; pressed again it interrupts at once
    stop = StopControl().install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.should_stop() and stop.reason == "signal SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    # a 10-minute job stops itself 90 s early; a 1-minute job at 80 % of its time
    assert 505 < StopControl(10).deadline - time.monotonic() <= 510
    assert 47 < StopControl(1).deadline - time.monotonic() <= 48


def test_plan_refinement_without_reports_writes_an_empty_plan(tmp_path):
    """When no item failed the phase before, the workflow passes no report: the plan must still be written."""
    out = tmp_path / "plan.json"
    rc = main(["plan-refinement", "--dataset", "d", "--dataset-config",
               '{"source": {"format": "folder", "root": "src"}, "model": {"family": "siren"}, "refine_job_size": 4}',
               "--phase", "until_threshold", "--reports", "--out", str(out)])
    assert rc == 0
    plan = json.loads(out.read_text())
    assert plan["jobs"] == {} and plan["n_failing"] == 0


def _demo_source(tmp_path: Path, kind: str) -> dict:
    """A small demo source (official layout) and its config, for the bad-item round trips below."""
    from izoo.datasets.demo import make_cifar10, make_cityscapes

    if kind == "cityscapes":
        root = make_cityscapes(tmp_path / "src", seed=0, cities={"train": {"aachen": 3}})
        return {"format": "cityscapes", "root": str(root), "splits": ["train"], "size": [16, 32]}
    make_cifar10(tmp_path / "src", seed=0, n_per_class=5, n_test_per_class=1)
    return {"format": "cifar10", "root": str(tmp_path / "src"), "splits": ["train"], "max_items": 20}


def _damage(source: dict, kind: str) -> Path:
    """Break one item after the manifest was built, in a way its default check does not see."""
    if kind == "cityscapes":
        label = sorted(Path(source["root"], "gtFine", "train", "aachen").glob("*_labelIds.png"))[0]
        ids = np.asarray(Image.open(label)).copy()
        ids[0, 0] = 50   # out of range: only decoding every label id finds it
        Image.fromarray(ids).save(label)
        return label
    batch = Path(source["root"]) / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:5000])
    return batch


@pytest.mark.parametrize("kind", ["cityscapes", "cifar10"])
def test_bad_item_found_by_fit_names_a_fix_that_works(tmp_path, capsys, kind):
    """An item that breaks only at fit time: the error's fix, followed literally, gets the next fit through."""
    source = _demo_source(tmp_path, kind)
    cfg = {"source": source, "model": {"family": "siren", "depth": 2, "width": 8},
           "fit": {"batch_size": 8, "iterations": 2, "check_every": 1, "device": "cpu", "compile": "off"}}

    def manifest() -> Path:
        assert main(["manifest", "--dataset", "d", "--dataset-config", json.dumps(cfg), "--out-dir",
                     str(tmp_path / "res"), "--shard-size", "64"]) == 0
        return tmp_path / "res" / "manifest.csv"

    args = _fit_args(cfg, manifest(), tmp_path)
    bad_file = _damage(source, kind)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(bad_file) in err and "fix:" in err, err
    fix = err.split("fix:", 1)[1]
    assert "source.on_bad_item: skip" in fix and "manifest" in fix, fix
    # the fix names every setting it takes: the default header check never decodes Cityscapes label ids
    assert ("source.validate: full" in fix) == (kind == "cityscapes"), fix
    cfg["source"]["on_bad_item"] = "skip"
    if "source.validate: full" in fix:
        cfg["source"]["validate"] = "full"
    args = _fit_args(cfg, manifest(), tmp_path)
    assert main(args) == 0, capsys.readouterr().err
    assert (tmp_path / "res" / "bad_items.csv").read_text().count("\n") >= 2   # the item is listed as left out


@pytest.mark.parametrize("killed_at", ["csv", "h5"])
def test_fit_killed_while_writing_its_output_leaves_no_finished_looking_file(tmp_path, killed_at):
    """SIGKILL while the report or the weights file is being written: the weights file (the job's product,
    written last) never exists without its report, nothing half-written has a final name, and the same
    command then finishes from the work dir and clears the dead process's temp file."""
    cfg, manifest = _dataset(tmp_path, n=4, iterations=5)
    args = _fit_args(cfg, manifest, tmp_path)
    out = tmp_path / "fit" / "basic"
    victim = f".train-00000.{killed_at}.tmp-"
    # Python's audit hook sees every open(): the report's temp is opened to be written, the weights' temp
    # (written by HDF5 in C) is opened once more to be fsynced before its rename
    code = ("import os, signal, sys\n"
            f"def hook(event, a):\n    if event == 'open' and {victim!r} in str(a[0]): os.kill(os.getpid(), signal.SIGKILL)\n"
            "sys.addaudithook(hook)\nfrom izoo.cli import main\n"
            f"sys.exit(main({args!r}))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (out / "train-00000.h5").exists()
    assert (out / "train-00000.csv").exists() == (killed_at == "h5")   # a report alone is not a finished job
    if killed_at == "h5":   # killed at the fsync of the complete temp file, which stays behind
        assert [p.name for p in out.iterdir() if p.name.startswith(victim)]

    done = subprocess.run([sys.executable, "-m", "izoo", *args], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "group 1/2 reused from work dir" in done.stderr and "group 2/2 reused from work dir" in done.stderr
    assert layout.read_inr_file(out / "train-00000.h5").params["layer0.weight"].shape == (4, 8, 2)
    assert sorted(p.name for p in out.iterdir()) == ["train-00000.csv", "train-00000.h5"]
