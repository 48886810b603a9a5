"""Pose benchmark: rotation metrics, 3D tokenizers, the seen/unseen split, iNeRF refinement, a tiny end-to-end run."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from izoo.archive.layout import base_attrs, write_inr_file
from izoo.archive.reader import open_archive
from izoo.benchmarks.pose.data import SceneCameras, sample_poses, scene_cameras, split_scenes
from izoo.benchmarks.pose.geometry import (camera_translation, compose_c2w, constant_pose, geodesic_rotation_error_deg,
                                          matrix_to_rotation_6d, mean_rotation, pose_errors, rotation_6d_to_matrix,
                                          summarise_errors)
from izoo.benchmarks.pose.model import VolumeTokenizer
from izoo.benchmarks.pose.refine import RefineSettings, photometric_error, refine_pose, se3_exp
from izoo.benchmarks.pose.settings import PoseSettings
from izoo.fitting.families import get_family
from izoo.nerf.model import NerfSpec, init_params
from izoo.nerf.render import query_grid, render_image, render_rays
from izoo.nerf.synthetic import procedural_scene



def rot_z(deg):
    t = math.radians(deg)
    return torch.tensor([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])


def rot_x(deg):
    t = math.radians(deg)
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(t), -math.sin(t)], [0.0, math.sin(t), math.cos(t)]])


def random_rotations(n, seed):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen, dtype=torch.float64))
    return (q * torch.linalg.det(q).sign()[:, None, None]).float()  # det +1


def test_geodesic_error_on_known_rotations():
    eye = torch.eye(3)
    for deg in (0.0, 0.5, 5.0, 30.0, 90.0, 179.0, 180.0):
        assert float(geodesic_rotation_error_deg(rot_z(deg), eye)) == pytest.approx(deg, abs=1e-3)
    # composition about different axes: 90° about z then 90° about x is a 120° rotation
    assert float(geodesic_rotation_error_deg(rot_z(90) @ rot_x(90), eye)) == pytest.approx(120.0, abs=1e-3)
    # the error depends only on the relative rotation
    base = random_rotations(1, 3)[0]
    assert float(geodesic_rotation_error_deg(base @ rot_x(20), base)) == pytest.approx(20.0, abs=1e-3)


def test_geodesic_error_is_symmetric():
    a, b = random_rotations(16, 0), random_rotations(16, 1)
    ab, ba = geodesic_rotation_error_deg(a, b), geodesic_rotation_error_deg(b, a)
    assert torch.allclose(ab, ba, atol=1e-4)
    assert bool((ab >= 0).all() and (ab <= 180).all())


def test_6d_round_trip_and_gram_schmidt():
    rots = random_rotations(8, 2)
    assert torch.allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(rots)), rots, atol=1e-5)
    any6 = torch.randn(5, 6)
    r = rotation_6d_to_matrix(any6)
    assert torch.allclose(r.transpose(-1, -2) @ r, torch.eye(3).expand(5, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(5), atol=1e-5)


def test_compose_c2w_inverts_camera_translation():
    pose = torch.eye(4)
    pose[:3, :3] = random_rotations(1, 5)[0]
    pose[:3, 3] = torch.tensor([1.0, -2.0, 3.0])
    assert torch.allclose(compose_c2w(pose[:3, :3], camera_translation(pose)), pose, atol=1e-5)


def test_summary_thresholds():
    te = torch.tensor([0.01, 0.02, 0.03, 0.04])
    re = torch.tensor([1.0, 10.0, 20.0, 40.0])
    s = summarise_errors(te, re)
    assert s["re@5"] == 25.0 and s["re@15"] == 50.0 and s["re@30"] == 75.0
    assert s["te_mean"] == pytest.approx(2.5) and s["re_mean"] == pytest.approx(17.75)


def test_split_is_per_class_disjoint_and_keeps_singletons_seen():
    kept = pd.DataFrame({"item_id": [f"s{i}" for i in range(13)], "label": [0] * 10 + [1] * 2 + [2],
                         "row": range(13)})
    seen, unseen = split_scenes(kept, 0.2, seed=0)
    assert not set(seen) & set(unseen) and sorted(seen + unseen) == list(range(13))
    labels = kept.set_index("row")["label"]
    assert sorted(labels[unseen].tolist()) == [0, 0, 1]
    assert 12 in seen
    assert split_scenes(kept, 0.2, seed=0) == (seen, unseen)


def test_uniform_volume_tokenizer_matches_query_grid():
    spec = NerfSpec(depth=2, width=16, pos_freqs=2, dir_freqs=1)
    nerf = init_params(spec, [0, 1])
    tok = VolumeTokenizer("uniform", resolution=8, volume_size=4, bound=1.5, dim=6)
    vals = tok.values(nerf, spec)                                   # [B, 8 tokens, 64 points, 4]
    grid = query_grid(nerf, spec, resolution=8, bound=1.5)          # [B, 4, 8, 8, 8]
    # token (1, 0, 1), point (2, 3, 0) sits at grid index (1*4+2, 0*4+3, 1*4+0)
    t, p = (1 * 2 + 0) * 2 + 1, (2 * 4 + 3) * 4 + 0
    assert torch.allclose(vals[:, t, p, :3], grid[:, :3, 6, 3, 4], atol=1e-5)
    assert torch.allclose(vals[:, t, p, 3], 1 - torch.exp(-grid[:, 3, 6, 3, 4] * tok.cell), atol=1e-5)
    # the block layout fed to the 3D conv puts each token's points back on the grid
    tokens = tok.embed_values(vals)
    assert tokens.shape == (2, 8, 6)
    for kind in ("lc", "lp", "lp_reg"):
        learn = VolumeTokenizer(kind, resolution=8, volume_size=4, bound=1.5, dim=6)
        assert torch.allclose(learn.points(), tok.points(), atol=1e-5)
        assert learn.coordinate_parameters()
    assert float(VolumeTokenizer("lp_reg", 8, 4, 1.5, 6).penalty().detach()) == 0.0  # grid points are a cell apart


def fit_sphere_nerf(size=16, steps=120, seed=0):
    """A tiny NeRF fitted to a procedural sphere coloured by position (a demo scene); returns it and the scene."""
    torch.manual_seed(seed)
    scene = procedural_scene(size=size, n_train=12, n_test=2, colour=None, n_samples=64)
    spec = NerfSpec(depth=2, width=48, pos_freqs=4, dir_freqs=1)
    nerf = {k: v.clone().requires_grad_(True) for k, v in init_params(spec, [seed]).items()}
    opt = torch.optim.Adam(nerf.values(), lr=5e-3)
    from izoo.nerf.render import get_rays
    rays_o, rays_d = get_rays(size, size, scene.focal, scene.poses[scene.train_views])
    rays_o, rays_d = rays_o.reshape(1, -1, 3), rays_d.reshape(1, -1, 3)
    target = scene.images[scene.train_views].reshape(1, -1, 3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(rays_o.shape[1], (512,), generator=gen)
        out = render_rays(nerf, spec, rays_o[:, idx], rays_d[:, idx], n_samples=24, perturb=True, generator=gen)
        loss = (out["rgb"] - target[:, idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in nerf.items()}, spec, scene


@pytest.fixture(scope="module")
def sphere():
    return fit_sphere_nerf()


def test_refinement_lowers_photometric_error(sphere):
    nerf, spec, scene = sphere
    true = scene.poses[scene.test_views[0]]
    target = render_image(nerf, spec, true, 16, 16, scene.focal, n_samples=24)
    perturbed = se3_exp(torch.tensor([0.06, -0.05, 0.04, 0.08, -0.06, 0.05])) @ true
    settings = RefineSettings(steps=40, lr=0.01, n_rays=256, n_samples=24)
    refined, losses = refine_pose(nerf, spec, target, perturbed, scene.focal, settings)
    before = photometric_error(nerf, spec, target, perturbed, scene.focal, n_samples=24)
    after = photometric_error(nerf, spec, target, refined, scene.focal, n_samples=24)
    assert after < 0.5 * before
    _, re_before = pose_errors(perturbed, true)
    _, re_after = pose_errors(refined, true)
    assert float(re_after) < float(re_before)


def make_nerf_archive(path, sphere, n_scenes=6):
    """Scenes = the fitted sphere NeRF with small weight jitter, 3 classes, and the NeRF family's camera extras."""
    nerf, spec, scene = sphere
    gen = torch.Generator().manual_seed(0)
    params = {k: (v.expand(n_scenes, *v.shape[1:]) + 0.01 * torch.randn(n_scenes, *v.shape[1:], generator=gen))
              .numpy() for k, v in nerf.items()}
    items = pd.DataFrame({"index": np.arange(n_scenes), "item_id": [f"scene{i}" for i in range(n_scenes)],
                          "source_id": "synthetic", "split": "all", "label": [i % 3 for i in range(n_scenes)],
                          "psnr": 30.0, "phase": "basic", "iterations": 250, "seconds": 1.0, "passed": True})
    # the cameras as the NeRF family archives them: 2 held-out views per scene, NaN-padded to 3
    family = get_family("nerf")({"family": "nerf"}, {"archived_views": 3})
    extras = family.extras([SimpleNamespace(item_id=f"scene{i}", scene=scene) for i in range(n_scenes)])
    write_inr_file(path, params, items, base_attrs("nerf", spec.to_dict(), dataset="omni", split="all"), extras)
    return path


TINY = dict(grid_resolution=8, volume_size=4, image_size=8, image_patch=4, dim=16, heads=2, volume_depth=1,
            fusion_depth=1, mlp_ratio=2.0, epochs=2, scenes_per_batch=2, views_per_scene=2, bank_views=3,
            eval_views=2, render_samples=8, mae_epochs=1, mae_decoder_depth=1, refine_steps=2, refine_rays=16,
            refine_max_views=2, unseen_fraction=0.5, log_every=0)


def test_short_training_run_end_to_end_through_cli(tmp_path, sphere):
    from izoo.cli import main

    archive = make_nerf_archive(tmp_path / "all.h5", sphere)
    kept = tmp_path / "kept_scenes.csv"
    pd.DataFrame({"item_id": [f"scene{i}" for i in range(6)], "label": [i % 3 for i in range(6)]}).to_csv(kept)
    outs = []
    for tok, pre, refine in (("uniform", False, True), ("lp_reg", True, False)):
        out = tmp_path / f"{tok}.json"
        settings = json.dumps({**TINY, "pretrain": pre, "refine": refine})
        assert main(["bench-pose", "--archive", str(archive), "--kept", str(kept), "--settings", settings,
                     "--tokenizer", tok, "--seed", "0", "--out", str(out)]) == 0
        outs.append(str(out))
    rec = json.loads(open(outs[0]).read())
    assert rec["split"]["seen_scenes"] == 3 and rec["split"]["unseen_scenes"] == 3
    for split in ("seen", "unseen"):
        assert rec[split]["n_views"] == 3 * 2
        assert 0 <= rec[split]["re_mean"] <= 180 and 0 <= rec[split]["re@30"] <= 100
        assert rec[split]["refined"]["refined_views"] == 2
    pre = json.loads(open(outs[1]).read())
    assert pre["pretrain"] and len(pre["mae_loss"]) == 1 and pre["method"] == "Ours+Pre+LP+reg"
    assert main(["bench-pose-table", "--runs", *outs, "--out-csv", str(tmp_path / "t.csv"),
                 "--out-md", str(tmp_path / "t.md")]) == 0
    md = (tmp_path / "t.md").read_text()
    assert "Unseen scenes" in md and "Ours+Pre+LP+reg" in md
    table = pd.read_csv(tmp_path / "t.csv")
    # each variant its own row: the refined uniform run gives "+Ref" its own, then the no-learning reference
    assert table["variant"].tolist() == ["plain", "refine", "pretrain", "reference"]
    assert table["method"].tolist()[:3] == ["Ours", "Ours+Ref", "Ours+Pre+LP+reg"]
    assert table.loc[1, "seen_RE_mean"] == pytest.approx(rec["seen"]["refined"]["re_mean"])
    refs = [json.loads(open(o).read())["reference"] for o in outs]
    assert table.loc[3, "unseen_RE_mean"] == pytest.approx(np.mean([r["unseen"]["re_mean"] for r in refs]))
    assert "no learning (constant pose)" in md


def test_scene_cameras_from_stored_poses(tmp_path, sphere):
    archive = open_archive(make_nerf_archive(tmp_path / "all.h5", sphere, n_scenes=2))
    cams = scene_cameras(archive, 1, PoseSettings())
    assert cams.radius == pytest.approx(4.0, rel=1e-4)
    assert math.degrees(cams.elevation_range[0]) == pytest.approx(45.0, abs=1e-3)
    assert cams.fov_x == pytest.approx(math.radians(40.0), rel=1e-4)
    poses = sample_poses(5, cams, torch.Generator().manual_seed(0))
    assert torch.allclose(poses[:, :3, 3].norm(dim=-1), torch.full((5,), 4.0), atol=1e-4)


def test_variants_map_to_training_jobs():
    from izoo.benchmarks.pose.variants import pose_training_jobs

    assert pose_training_jobs(["plain"]) == {"plain": {"pretrain": False, "refine": False}}
    # refinement post-processes a trained model: no extra training job, its base job refines
    assert pose_training_jobs(["plain", "refine", "pretrain", "pretrain_refine"]) == {
        "plain": {"pretrain": False, "refine": True}, "pretrain": {"pretrain": True, "refine": True}}
    assert pose_training_jobs(["pretrain_refine"]) == {"pretrain": {"pretrain": True, "refine": True}}
    with pytest.raises(ValueError, match="unknown pose variant"):
        pose_training_jobs(["pre"])


def test_constant_pose_is_the_best_single_training_rotation():
    gen = torch.Generator().manual_seed(0)
    cams = SceneCameras(4.0, (0.0, math.radians(60)), 0.7, None)
    poses = sample_poses(64, cams, gen)
    still = constant_pose(poses)
    _, re = pose_errors(still.expand_as(poses), poses)
    for k in range(0, 64, 7):  # no training pose used as the constant does better on the training poses
        _, other = pose_errors(poses[k].expand_as(poses), poses)
        assert float(re.mean()) <= float(other.mean()) + 1e-4
    assert torch.allclose(camera_translation(still), camera_translation(poses).mean(0), atol=1e-5)
    rots = random_rotations(3, 9)
    assert torch.allclose(mean_rotation(rots[:1].expand(5, 3, 3)), rots[0], atol=1e-5)


def test_config_takes_variants_for_pose_benchmarks_only():
    from pathlib import Path

    from izoo.config import load_config, validate_config
    from izoo.errors import IzooError

    cfg = load_config(Path(__file__).resolve().parents[1] / "config.yaml")
    assert cfg["benchmarks"]["omniobject3d_pose"]["variants"] == ["plain", "refine", "pretrain", "pretrain_refine"]
    assert cfg["benchmarks"]["cifar10_classification"]["variants"] == ["plain"]  # the schema's default
    cfg["benchmarks"]["cifar10_classification"]["variants"] = ["pretrain"]
    with pytest.raises(IzooError, match="are pose variants"):
        validate_config(cfg)
