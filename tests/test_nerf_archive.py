"""Scene filter, filter-scenes CLI, NeRF archives (write → read → render/grid), demo scenes through izoo.datasets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import izoo.archive
from izoo.archive import layout
from izoo.cli import main as izoo_main
from izoo.datasets.base import Sample
from izoo.datasets.demo import make_scenes
from izoo.datasets.registry import open_source
from izoo.errors import BadItemError, IzooError
from izoo.fitting.families import get_family
from izoo.fitting.phases import phase_settings
from izoo.nerf.archive import open_nerf_archive
from izoo.nerf.filtering import filter_scenes
from izoo.nerf.render import render_image



def report(rows: list[tuple[str, int, float]], phase: str = "basic") -> pd.DataFrame:
    return pd.DataFrame({"index": range(len(rows)), "item_id": [r[0] for r in rows], "split": "all",
                         "label": [r[1] for r in rows], "phase": phase, "psnr_before": 5.0,
                         "psnr_after": [r[2] for r in rows], "iterations": 10, "seconds": 1.0,
                         "passed": [r[2] >= 25 for r in rows]})


def test_filter_drops_low_scenes_then_small_classes() -> None:
    rows = [(f"a{i}", 0, 30.0) for i in range(5)]                        # class 0: 5 good scenes
    rows += [(f"b{i}", 1, 30.0) for i in range(5)] + [("b_low", 1, 20.0)]  # class 1: 5 good + 1 low
    rows += [(f"c{i}", 2, 30.0) for i in range(4)] + [("c_low", 2, 10.0)]  # class 2: 4 good -> dropped
    kept, dropped = filter_scenes(report(rows), gate=25.0, min_per_class=5)
    assert sorted(kept["item_id"]) == sorted([f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)])
    reasons = dict(zip(dropped["item_id"], dropped["reason_code"]))
    assert reasons == {"b_low": "below_gate", "c_low": "below_gate", **{f"c{i}": "small_class" for i in range(4)}}
    text = dict(zip(dropped["item_id"], dropped["reason"]))
    assert "20.00 dB is below the 25 dB gate" in text["b_low"]
    assert "keeps only 4 scene(s)" in text["c0"] and "fewer than 5" in text["c0"]


def test_filter_uses_the_last_phase_of_each_scene() -> None:
    basic = report([("s0", 0, 20.0), ("s1", 0, 26.0)], "basic")
    extended = report([("s0", 0, 25.5)], "extended")
    kept, dropped = filter_scenes(pd.concat([extended, basic]), gate=25.0, min_per_class=1)
    assert sorted(kept["item_id"]) == ["s0", "s1"] and dropped.empty
    assert float(kept.set_index("item_id").at["s0", "psnr_after"]) == 25.5


def test_filter_scenes_cli_writes_both_lists(tmp_path, capsys) -> None:
    rows = [(f"a{i}", 0, 30.0) for i in range(3)] + [("a_low", 0, 3.0), ("lonely", 1, 40.0)]
    path = tmp_path / "items.csv"
    report(rows).rename(columns={"psnr_after": "psnr"}).to_csv(path, index=False)
    rc = izoo_main(["filter-scenes", "--reports", str(path), "--gate", "25", "--min-per-class", "2",
                    "--out-kept", str(tmp_path / "kept.csv"), "--out-dropped", str(tmp_path / "dropped.csv")])
    assert rc == 0
    kept = pd.read_csv(tmp_path / "kept.csv")
    dropped = pd.read_csv(tmp_path / "dropped.csv")
    assert sorted(kept["item_id"]) == ["a0", "a1", "a2"]
    assert dict(zip(dropped["item_id"], dropped["reason_code"])) == {"a_low": "below_gate", "lonely": "small_class"}
    assert "kept 3 scenes in 1 classes" in capsys.readouterr().out
    assert izoo_main(["filter-scenes", "--reports", str(tmp_path / "nope.csv"), "--out-kept", "k.csv",
                      "--out-dropped", "d.csv"]) == 2


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    make_scenes(out, classes=("snowman", "tower"), scenes_per_class=1, n_train=6, n_test=3, size=16)
    return out / "scenes"


def test_demo_scenes_fit_archive_render_and_grid(demo_root, tmp_path) -> None:
    source = open_source({"format": "scenes", "root": str(demo_root), "splits": ["all"], "size": 16,
                          "train_views": 6})
    refs = source.list_items("all")
    samples = [source.load(r) for r in refs]
    fit_cfg = {"iterations": 60, "lr": 5e-3, "lr_min": 5e-4, "gate_psnr": 99.0, "check_every": 30,
               "rays_per_batch": 128, "samples_per_ray": 16, "archived_views": 4}
    family = get_family("nerf")({"family": "nerf", "depth": 2, "width": 32, "pos_freqs": 4, "dir_freqs": 2}, fit_cfg)
    res = family.fit_batch(samples, None, [42] * len(samples), phase_settings(fit_cfg, "basic"), "cpu")
    assert (res.psnr > res.psnr_before + 2.0).all(), (res.psnr_before, res.psnr)

    items = pd.DataFrame({"index": range(len(refs)), "item_id": [r.item_id for r in refs],
                          "source_id": [r.source_id for r in refs], "split": "all",
                          "label": [r.label for r in refs], "psnr": res.psnr, "phase": "basic",
                          "iterations": res.iterations, "seconds": res.seconds, "passed": res.passed})
    attrs = layout.base_attrs("nerf", family.architecture(), **family.file_attrs())
    path = layout.write_inr_file(tmp_path / "nerf.h5", res.params, items, attrs, family.extras(samples))

    with open_nerf_archive(path) as arc:
        assert len(arc) == 2 and arc.spec == family.spec
        cam = arc.camera(1)
        scene = samples[1].scene
        assert cam["poses"].shape == (3, 4, 4) and cam["view_index"].tolist() == [6, 7, 8]
        assert cam["class_name"] == scene.class_name and cam["label"] == scene.label
        params = arc.params([1, 0])
        np.testing.assert_array_equal(params["rgb.weight"][0].numpy(), res.params["rgb.weight"][1])
        # the archived NeRF renders its held-out view as well as the fitted weights did
        img = arc.render_pose(1, cam["poses"][0])
        direct = render_image({k: torch.from_numpy(v[1]) for k, v in res.params.items()}, family.spec,
                              torch.as_tensor(scene.poses[6]), 16, 16, scene.focal, n_samples=16)
        torch.testing.assert_close(img, direct)
        # re-rendering the archived held-out cameras reproduces the PSNR the fit reported
        views = torch.stack([arc.render_pose(1, pose, n_samples=16) for pose in cam["poses"]])
        mse = (views.clamp(0, 1) - scene.images[6:9]).pow(2).mean(dim=(1, 2, 3))
        assert float((-10 * torch.log10(mse)).mean()) == pytest.approx(float(res.psnr[1]), abs=1e-3)
        assert arc.render_pose(0, cam["poses"][0], 8, 8).shape == (8, 8, 3)
        grid = arc.grid(resolution=8)
        assert grid.shape == (2, 4, 8, 8, 8) and bool((grid[:, 3] >= 0).all())
    # the plain reader renders NeRFs through the view the nerf family registered: first held-out camera
    with izoo.archive.open(path) as plain:
        assert plain.spec == family.spec and plain.param_names == family.spec.param_names()
        torch.testing.assert_close(plain.render([1], 16, 16)[0], img.permute(2, 0, 1))

    png = tmp_path / "view.png"
    assert izoo_main(["render-nerf", "--archive", str(path), "--item", refs[0].item_id, "--size", "12",
                      "--out", str(png)]) == 0
    assert png.stat().st_size > 0
    with pytest.raises(IzooError):
        open_nerf_archive(tmp_path / "missing.h5")


def test_reader_errors_are_clear(demo_root, tmp_path) -> None:
    import shutil

    broken = tmp_path / "scenes"
    shutil.copytree(demo_root, broken)
    scene_dirs = sorted(p for p in broken.glob("*/*") if p.is_dir())
    (scene_dirs[0] / "train" / "r_2.png").unlink()
    (scene_dirs[1] / "transforms_test.json").write_text("{not json")
    source = open_source({"format": "scenes", "root": str(broken), "splits": ["all"], "size": 16, "train_views": 6})
    refs = {r.source_id.split("/")[0]: r for r in source.list_items("all")}
    with pytest.raises(BadItemError, match="r_2.png.*missing"):
        source.load(refs[scene_dirs[0].parent.name])
    with pytest.raises(BadItemError, match="transforms_test.json.*unreadable transforms file"):
        source.load(refs[scene_dirs[1].parent.name])


def test_extras_shapes_are_fixed_across_batches(demo_root) -> None:
    source = open_source({"format": "scenes", "root": str(demo_root), "splits": ["all"], "size": 16, "train_views": 7})
    samples = [source.load(r) for r in source.list_items("all")]
    family = get_family("nerf")({"family": "nerf"}, {})
    extras = family.extras(samples[:1])
    assert {k: v.shape for k, v in extras.items()} == {
        "test_poses": (1, 4, 4, 4), "test_view_index": (1, 4), "focal": (1,), "height": (1,), "width": (1,),
        "class_name": (1,)}
    assert extras["test_view_index"].tolist() == [[7, 8, -1, -1]]
    json.dumps(family.architecture())  # archive attributes must be JSON
    with pytest.raises(IzooError, match="has no scene"):
        family.extras([Sample(item_id="x", label=0)])


def test_fit_shard_runs_the_nerf_family_in_batches(demo_root, tmp_path) -> None:
    from izoo.fitting.shard import fit_shard

    source_cfg = {"format": "scenes", "root": str(demo_root), "splits": ["all"], "size": 12, "train_views": 6}
    source = open_source(source_cfg)
    refs = source.list_items("all")
    manifest = pd.DataFrame({"index": range(len(refs)), "split": "all", "item_id": [r.item_id for r in refs],
                             "label": [r.label for r in refs], "source_id": [r.source_id for r in refs],
                             "shard": "all-00000"})
    dataset_cfg = {"source": source_cfg, "model": {"family": "nerf", "depth": 2, "width": 16, "pos_freqs": 3,
                                                   "dir_freqs": 2},
                   "fit": {"batch_size": 1, "iterations": 8, "lr": 5e-3, "lr_min": 5e-4, "gate_psnr": 10.0,
                           "check_every": 4, "rays_per_batch": 64, "samples_per_ray": 8, "device": "cpu"}}
    out = fit_shard(manifest, source.load, dataset_cfg, tmp_path / "work", "basic", dataset="demo_scenes")
    out.write(tmp_path / "shard.h5", tmp_path / "shard.csv")
    with open_nerf_archive(tmp_path / "shard.h5") as arc:
        assert len(arc) == 2 and arc.attrs["rendering"]["samples_per_ray"] == 8
        assert arc.camera(1)["poses"].shape == (3, 4, 4)
        assert arc.items["iterations"].tolist() == [8, 8]
        archived_psnr = arc.items["psnr"].to_numpy()
    report_csv = pd.read_csv(tmp_path / "shard.csv")
    assert report_csv["phase"].eq("basic").all() and np.isfinite(report_csv["psnr_before"]).all()
    np.testing.assert_allclose(report_csv["psnr_after"].to_numpy(), archived_psnr, rtol=1e-6)
