"""The real pipeline end to end on 4 tiny PNGs: ``izoo fit`` (basic + extended) → ``izoo merge`` → ``izoo verify``
re-rendering every item against its source image through the dataset config."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from izoo.archive.verify import inspect_archive, verify_archive

cli = pytest.importorskip("izoo.cli")



def test_fit_merge_verify_against_source(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        cls = "a" if i % 2 == 0 else "b"
        path = tmp_path / "src" / "train" / cls / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        smooth = np.kron(rng.integers(0, 256, (3, 3, 3)), np.ones((2, 2, 1))).astype(np.uint8)
        Image.fromarray(smooth).save(path)
        rows.append({"index": i, "split": "train", "item_id": f"train/{cls}/img{i}", "label": i % 2,
                     "source_id": f"train/{cls}/img{i}.png", "shard": f"train-{i // 2:05d}"})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    cfg = {"source": {"format": "folder", "root": str(tmp_path / "src"), "splits": ["train"], "on_bad_item": "error"},
           "model": {"family": "siren", "depth": 3, "width": 8, "w0": 30, "init": "siren"},
           "seed": {"mode": "shared", "value": 42},
           "fit": {"batch_size": 2, "iterations": 20, "lr": 1e-2, "lr_min": 1e-4, "gate_psnr": 60.0,
                   "check_every": 10, "checkpoint_every": 20, "device": "cpu", "compile": "off",
                   "extended": {"factor": 1, "patience": 10}},
           "refine_job_size": 3}
    fit = tmp_path / "fit"
    for shard in ("train-00000", "train-00001"):
        assert cli.main(["fit", "--dataset", "demo", "--dataset-config", json.dumps(cfg), "--manifest", str(manifest),
                         "--phase", "basic", "--shard", shard, "--workdir", str(tmp_path / "work" / shard),
                         "--out-weights", str(fit / "basic" / f"{shard}.h5"),
                         "--out-report", str(fit / "basic" / f"{shard}.csv")]) == 0
    reports = [str(fit / "basic" / f"{s}.csv") for s in ("train-00000", "train-00001")]
    assert cli.main(["plan-refinement", "--dataset", "demo", "--dataset-config", json.dumps(cfg), "--phase",
                     "extended", "--reports", *reports, "--out", str(fit / "extended" / "plan.json")]) == 0
    jobs = sorted(json.loads((fit / "extended" / "plan.json").read_text())["jobs"])
    for job in jobs:
        assert cli.main(["fit", "--dataset", "demo", "--dataset-config", json.dumps(cfg), "--manifest", str(manifest),
                         "--phase", "extended", "--plan", str(fit / "extended" / "plan.json"), "--job", job,
                         "--workdir", str(tmp_path / "work" / "extended" / job),
                         "--out-weights", str(fit / "extended" / f"{job}.h5"),
                         "--out-report", str(fit / "extended" / f"{job}.csv")]) == 0
    out = tmp_path / "archive" / "train.h5"
    assert cli.main(["merge", "--dataset", "demo", "--manifest", str(manifest), "--split", "train",
                     "--shards", str(fit / "basic" / "train-00001.h5"), str(fit / "basic" / "train-00000.h5"),
                     "--refined", *[str(fit / "extended" / f"{j}.h5") for j in jobs], "--out", str(out)]) == 0

    report = verify_archive(out, manifest=manifest, sample=4, source_cfg=cfg["source"])
    assert report.ok, report.problems
    assert any("re-rendered 4 sampled items against their source images" in n for n in report.notes)
    summary = inspect_archive(out)
    assert "extended 4" in summary and "work_fingerprint" not in summary and "phase_report" not in summary
    capsys.readouterr()
    assert cli.main(["verify", str(out), "--manifest", str(manifest), "--dataset-config", json.dumps(cfg)]) == 0
    assert "re-rendered 4 sampled items" in capsys.readouterr().out
