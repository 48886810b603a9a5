"""izoo summary (the paper's Table 1): recipe and until-threshold cap per dataset, kept/dropped scenes for 3D."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from izoo.cli import main as izoo_main
from izoo.errors import IzooError
from izoo.reports import write_summary


def summary_json(folder: Path, dataset: str, family: str, items: int, **extra: object) -> Path:
    folder.mkdir(parents=True)
    row = {"dataset": dataset, "items": items, "splits": {"all": items}, "model": f"{family.upper()} 4/64",
           "params_per_item": 100, "device": "cpu", "fit_jobs": 1, "fit_hours": 0.1, "seconds_per_item": 1.0,
           "archive_bytes": 1000, "mean_psnr": 30.0, "std_psnr": 1.0, "min_psnr": 28.0, "gate_psnr": 25.0,
           "failures": 1, "share_passing_after_basic": 0.5, **extra}
    path = folder / "summary.json"
    path.write_text(json.dumps(row))
    return path


def test_summary_has_recipe_cap_and_scene_counts(tmp_path: Path) -> None:
    images = summary_json(tmp_path / "cifar" / "reports", "cifar", "siren", 10, recipe="released",
                          until_threshold_cap=20000)
    scenes = summary_json(tmp_path / "omni" / "reports", "omni", "nerf", 9, until_threshold_cap=900)
    pd.DataFrame({"item_id": [f"s{i}" for i in range(7)]}).to_csv(scenes.parent / "kept_scenes.csv", index=False)
    pd.DataFrame({"item_id": ["s7", "s8"], "reason": ["below gate", "small class"]}).to_csv(
        scenes.parent / "dropped_scenes.csv", index=False)
    md, csv = tmp_path / "summary.md", tmp_path / "summary.csv"
    filters = [scenes.parent / "kept_scenes.csv", scenes.parent / "dropped_scenes.csv"]
    assert izoo_main(["summary", "--inputs", str(images), str(scenes), "--scene-filters", *map(str, filters),
                      "--out-md", str(md), "--out-csv", str(csv)]) == 0
    table = pd.read_csv(csv, keep_default_na=False)
    assert table["recipe"].tolist() == ["released", "paper"]  # "paper" when the dataset names no recipe
    assert table["until-threshold cap (it)"].tolist() == [20000, 900]
    assert table["scenes kept"].tolist() == ["", "9 → 7 kept (2 dropped)"]
    assert "9 → 7 kept (2 dropped)" in md.read_text()


def test_summary_needs_both_scene_filter_tables(tmp_path: Path) -> None:
    scenes = summary_json(tmp_path / "omni" / "reports", "omni", "nerf", 3)
    kept = scenes.parent / "kept_scenes.csv"
    kept.write_text("item_id\ns0\n")
    with pytest.raises(IzooError, match="dropped_scenes.csv missing"):
        write_summary([scenes], tmp_path / "s.md", tmp_path / "s.csv", [kept])
