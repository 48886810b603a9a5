"""Learned shared init: ``izoo meta-init`` (Meta-SGD, resumable, deterministic) and fitting from its file."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from izoo.archive import layout
from izoo.archive.merge import merge_split
from izoo.cli import main
from izoo.config import load_config
from izoo.errors import IzooError
from izoo.fitting import learned_init, meta_init
from izoo.fitting.stream import FitInterrupted
from izoo.fitting.commands import sample_loader
from izoo.fitting.shard import fingerprint

REPO = Path(__file__).resolve().parent.parent
META = {"items": 4, "outer_steps": 4, "inner_steps": 3, "meta_batch": 2, "checkpoint_every": 1}


def _dataset(tmp_path: Path, n: int = 6) -> tuple[dict, Path]:
    """A folder dataset of ``n`` smooth 6×6 PNGs (train split and two test items), config and manifest."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        split = "test" if i >= n - 2 else "train"
        path = tmp_path / "src" / split / "a" / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        ramp = np.linspace(0, 255, 6)[None, :, None] * rng.uniform(0.3, 1.0, (1, 1, 3))
        Image.fromarray(np.broadcast_to(ramp, (6, 6, 3)).astype(np.uint8)).save(path)
        rows.append({"index": i, "split": split, "item_id": f"{split}/a/img{i}", "label": 0,
                     "source_id": f"{split}/a/img{i}.png", "shard": f"{split}-00000"})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    cfg = {"source": {"format": "folder", "root": str(tmp_path / "src"), "splits": ["train", "test"]},
           "model": {"family": "siren", "depth": 3, "width": 8, "w0": 30, "init": "learned",
                     "init_file": str(tmp_path / "init.h5")},
           "seed": {"mode": "shared", "value": 42}, "meta_init": dict(META),
           "fit": {"batch_size": 4, "iterations": 10, "lr": 1e-2, "lr_min": 1e-4, "gate_psnr": 60.0,
                   "check_every": 5, "device": "cpu", "compile": "off"}}
    return cfg, manifest


def _meta_args(cfg: dict, manifest: Path, tmp_path: Path, out: str = "init.h5", dataset: str = "demo") -> list[str]:
    return ["meta-init", "--dataset", dataset, "--dataset-config", json.dumps(cfg), "--manifest", str(manifest),
            "--workdir", str(tmp_path / "work" / out), "--out", str(tmp_path / out)]


def _fit_args(cfg: dict, manifest: Path, tmp_path: Path, name: str = "fit", dataset: str = "demo") -> list[str]:
    return ["fit", "--dataset", dataset, "--dataset-config", json.dumps(cfg), "--manifest", str(manifest),
            "--phase", "basic", "--shard", "train-00000", "--workdir", str(tmp_path / "work" / name),
            "--out-weights", str(tmp_path / f"{name}.h5"), "--out-report", str(tmp_path / f"{name}.csv")]


def test_meta_init_is_deterministic_resumable_and_uses_only_train_items(tmp_path, capsys):
    cfg, manifest = _dataset(tmp_path)
    assert main(_meta_args(cfg, manifest, tmp_path)) == 0
    err = capsys.readouterr().err
    assert "meta-init outer step 4/4" in err and "done: learned init of demo" in err
    first = learned_init.read_init_file(tmp_path / "init.h5", [f"layer{i}.{k}" for i in range(3) for k in ("weight", "bias")])
    assert first.attrs["dataset"] == "demo" and first.attrs["meta_init"]["outer_steps"] == 4
    assert first.meta_items.tolist() == [0, 1, 2, 3]          # the train split only, never the test items 4, 5
    assert first.params["layer1.weight"].shape == (8, 8)
    assert first.inner_steps == 3 and first.inner_lrs["layer1.weight"].shape == (8, 8)
    calibration = first.attrs["calibration_mean_steps"]
    assert sorted(calibration) == ["0.1", "0.3", "1"]
    assert first.adam_lr_factor == min((1.0, 0.3, 0.1), key=lambda f: (calibration[f"{f:g}"], -f))

    # interrupted after two outer steps (state saved), then resumed: the same init as the uninterrupted run
    calls = iter([False, False, True])
    loader = sample_loader(cfg)
    table = pd.read_csv(manifest)
    with pytest.raises(FitInterrupted):
        meta_init.run_meta_init("demo", cfg, table, tmp_path / "work2", tmp_path / "init2.h5", load_sample=loader,
                                should_stop=lambda: next(calls))
    assert (tmp_path / "work2" / "state.pt").exists() and not (tmp_path / "init2.h5").exists()
    meta_init.run_meta_init("demo", cfg, table, tmp_path / "work2", tmp_path / "init2.h5", load_sample=loader)
    assert "meta-init resumed at outer step 2/4" in capsys.readouterr().err
    second = learned_init.read_init_file(tmp_path / "init2.h5", list(first.params))
    assert second.sha256 == first.sha256

    # other settings: the saved state is not reused, and the init differs
    cfg["meta_init"]["outer_lr"] = 1e-2
    meta_init.run_meta_init("demo", cfg, table, tmp_path / "work2", tmp_path / "init3.h5", load_sample=loader)
    assert "made with other settings" in capsys.readouterr().err
    assert learned_init.read_init_file(tmp_path / "init3.h5", list(first.params)).sha256 != first.sha256


def test_meta_init_deadline_saves_state_and_exits_75(tmp_path, capsys):
    cfg, manifest = _dataset(tmp_path)
    cfg["meta_init"].update(outer_steps=10**6, checkpoint_every=10**6)
    assert main(_meta_args(cfg, manifest, tmp_path) + ["--runtime-minutes", "0.02"]) == 75
    assert "rerun the same command to resume (exit 75)" in capsys.readouterr().err
    assert (tmp_path / "work/init.h5/state.pt").exists() and not (tmp_path / "init.h5").exists()


def test_fit_starts_every_item_from_the_init_and_records_it(tmp_path, capsys):
    cfg, manifest = _dataset(tmp_path)
    assert main(_meta_args(cfg, manifest, tmp_path)) == 0
    init = learned_init.read_init_file(tmp_path / "init.h5", [f"layer{i}.{k}" for i in range(3) for k in ("weight", "bias")])
    assert main(_fit_args(cfg, manifest, tmp_path)) == 0
    fitted = layout.read_inr_file(tmp_path / "fit.h5")
    assert fitted.attrs["learned_init"]["sha256"] == init.sha256
    with h5py.File(tmp_path / "fit.h5", "r") as h5:
        stored = layout.read_shared_init(h5)
    assert all(np.array_equal(stored[k], init.params[k]) for k in init.params)

    siren_cfg = {**cfg, "model": {**cfg["model"], "init": "siren"}}
    siren_cfg["model"].pop("init_file")
    assert main(_fit_args(siren_cfg, manifest, tmp_path, name="siren")) == 0
    learned_before = pd.read_csv(tmp_path / "fit.csv")["psnr_before"]
    siren_before = pd.read_csv(tmp_path / "siren.csv")["psnr_before"]
    assert not np.allclose(learned_before, siren_before)      # the items really started elsewhere
    with h5py.File(tmp_path / "siren.h5", "r") as h5:
        assert layout.read_shared_init(h5) is None

    # the archive keeps the init and its hash; shard files from two inits are never merged silently
    archive = merge_split(manifest, "train", [tmp_path / "fit.h5"], tmp_path / "train.h5").path
    import izoo.archive

    arch = izoo.archive.open(archive)
    assert arch.attrs["learned_init"]["sha256"] == init.sha256
    assert np.array_equal(arch.shared_init()[0].numpy(), init.params["layer0.weight"])
    from izoo.archive.checks import check_structure

    arch.close()
    assert check_structure(archive, manifest=pd.read_csv(manifest)) == []
    with h5py.File(archive, "r+") as h5:
        h5["shared_init/layer2.bias"][0] += 1.0
    assert "/shared_init does not match the learned_init sha256 attribute" in check_structure(archive)
    with pytest.raises(IzooError, match="another initialisation"):
        merge_split(manifest, "train", [tmp_path / "fit.h5"], tmp_path / "mixed.h5", refined=[tmp_path / "siren.h5"])


def test_changed_init_refits_through_the_fingerprint(tmp_path, capsys):
    cfg, manifest = _dataset(tmp_path)
    assert main(_meta_args(cfg, manifest, tmp_path)) == 0
    items = pd.read_csv(manifest).iloc[:4]
    before = fingerprint(cfg, "basic", items)
    assert main(_fit_args(cfg, manifest, tmp_path)) == 0
    cfg["meta_init"]["outer_steps"] = 2
    assert main(_meta_args(cfg, manifest, tmp_path)) == 0      # rewrites init.h5 with other weights
    assert fingerprint(cfg, "basic", items) != before
    capsys.readouterr()
    assert main(_fit_args(cfg, manifest, tmp_path)) == 0
    assert "cannot be reused (it was made with other settings or items); refitting" in capsys.readouterr().err


def test_missing_or_mismatched_init_file_is_a_one_line_error(tmp_path, capsys):
    cfg, manifest = _dataset(tmp_path)
    assert main(_fit_args(cfg, manifest, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path / 'init.h5'}: learned init file is missing" in err

    assert main(_meta_args(cfg, manifest, tmp_path)) == 0
    wider = {**cfg, "model": {**cfg["model"], "width": 16}}
    assert main(_fit_args(wider, manifest, tmp_path, name="wide")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "init.h5: init file was learned for another model" in err and "width" in err

    assert main(_fit_args(cfg, manifest, tmp_path, name="other", dataset="other")) == 2
    assert "init.h5: init file was learned on dataset 'demo', not 'other'" in capsys.readouterr().err

    with h5py.File(tmp_path / "init.h5", "r+") as h5:
        h5["shared_init/layer0.bias"][0] += 1.0
    assert main(_fit_args(cfg, manifest, tmp_path, name="edited")) == 2
    assert "do not match its recorded sha256" in capsys.readouterr().err
    assert main(_meta_args(cfg, manifest, tmp_path)) == 0
    with h5py.File(tmp_path / "init.h5", "r+") as h5:
        h5["inner_lr/layer1.weight"][0] *= 2.0
    assert main(_fit_args(cfg, manifest, tmp_path, name="edited_lr")) == 2
    assert "init.h5: learned init file's /inner_lr does not match its recorded inner_lr_sha256" in capsys.readouterr().err

    no_file = {**cfg, "model": {k: v for k, v in cfg["model"].items() if k != "init_file"}}
    assert main(_fit_args(no_file, manifest, tmp_path, name="nofile")) == 2
    assert "model.init_file is not set" in capsys.readouterr().err


def test_config_refuses_meta_learning_from_a_held_out_split(tmp_path):
    over = tmp_path / "over.yaml"
    over.write_text("datasets:\n  demo_cifar10:\n    model: {family: siren, init: learned}\n"
                    "    meta_init: {split: test}\n")
    with pytest.raises(IzooError, match="meta_init.split is 'test', a held-out split"):
        load_config(REPO / "config.yaml", REPO / "config/demo.yaml", over)
    over.write_text("datasets:\n  demo_scenes:\n    model: {family: nerf, init: learned}\n")
    with pytest.raises(IzooError, match="needs family siren"):
        load_config(REPO / "config.yaml", REPO / "config/demo.yaml", over)
    with pytest.raises(IzooError, match="unknown key 'steps' in meta_init"):
        meta_init.MetaInitSettings.from_config({"steps": 3})


@pytest.mark.workflow
def test_workflow_meta_learns_before_fitting_and_reruns_on_a_changed_init(tmp_path):
    from workflow_helpers import TINY_OVERLAY, copy_workflow, run_snakemake

    work = copy_workflow(tmp_path / "wf")
    over = work / "learned.yaml"
    learned = ("datasets:\n  demo_cifar10:\n    model: {family: siren, depth: 3, width: 64, w0: 30.0, init: learned}\n"
               "    meta_init: {items: 8, outer_steps: %d, inner_steps: 2, meta_batch: 4}\n")
    over.write_text(learned % 3)
    target = "results/demo_cifar10/fit/basic/train-00000.h5"    # one shard: the init is made first
    run_snakemake(work, target, overlays=(TINY_OVERLAY, over))
    init_file = work / "results/demo_cifar10/meta_init/init.h5"
    init = learned_init.read_init_file(init_file, [f"layer{i}.{k}" for i in range(3) for k in ("weight", "bias")])
    assert "meta-init outer step 3/3" in (work / "logs/demo_cifar10/meta_init.log").read_text()
    manifest = pd.read_csv(work / "results/demo_cifar10/manifest.csv")
    assert set(manifest.loc[manifest["index"].isin(init.meta_items), "split"]) == {"train"}
    with h5py.File(work / target, "r") as h5:
        assert np.array_equal(layout.read_shared_init(h5)["layer1.weight"], init.params["layer1.weight"])
        assert layout.decode_attrs(h5.attrs)["learned_init"]["sha256"] == init.sha256

    # other meta_init settings → a new init → the fit job reruns (dry run lists both)
    over.write_text(learned % 4)
    plan = run_snakemake(work, target, "-n", overlays=(TINY_OVERLAY, over))
    out = plan.stdout + plan.stderr
    assert "meta_init" in out and "fit_basic" in out, out[-3000:]


@pytest.mark.parametrize("depth,width", [(3, 64), (4, 256), (5, 256)])   # the CIFAR, ImageNet, Cityscapes SIRENs
def test_every_config_siren_size_meta_learns_and_loads(tmp_path, depth, width):
    from izoo.siren.family import SirenFamily

    model = {"family": "siren", "depth": depth, "width": width, "w0": 30.0}
    family = SirenFamily(model, {"lr": 1e-3, "compile": "off"})
    settings = meta_init.MetaInitSettings.from_config({"items": 2, "outer_steps": 1, "inner_steps": 1, "meta_batch": 2})
    images = torch.rand(2, 3, 4, 8)
    res = meta_init.meta_sgd(images, family, settings)
    learned_init.write_init_file(tmp_path / "init.h5", res.params, [0, 1],
                                 {"dataset": "d", "architecture": family.architecture()}, inner_lrs=res.inner_lrs,
                                 inner_steps=settings.inner_steps)
    loaded = SirenFamily({**model, "init": "learned", "init_file": str(tmp_path / "init.h5")})
    start = loaded.init([1, 2, 3])
    assert start["layer1.weight"].shape == (3, width, width)
    assert np.array_equal(start["layer0.weight"][2], res.params["layer0.weight"])
    assert loaded.learned_init.warm_start().steps == 1
    assert loaded.learned_init.inner_lrs["layer1.weight"].shape == (width, width)
    # an init file without learning rates (format 1) is a plain init: fits start their Adam phase from it
    learned_init.write_init_file(tmp_path / "plain.h5", res.params, [0, 1],
                                 {"dataset": "d", "architecture": family.architecture()})
    plain = SirenFamily({**model, "init": "learned", "init_file": str(tmp_path / "plain.h5")})
    assert plain.learned_init.warm_start() is None and plain.learned_init.sha256 == loaded.learned_init.sha256


def test_fits_from_a_meta_sgd_init_take_its_learned_lr_steps_first():
    """A fit with the warm start equals the warm-start steps followed by a plain fit; they count as iterations."""
    import dataclasses

    from izoo.fitting.phases import phase_settings
    from izoo.siren import engine, warm_start
    from izoo.siren import model as siren

    spec = siren.SirenSpec(depth=3, width=16)
    images = torch.rand(5, 3, 6, 7)
    init = [p.expand(5, *p.shape[1:]).contiguous() for p in siren.init_params(spec, [42])]
    lrs = [torch.full(p.shape[1:], 0.05) * (1 + k) for k, p in enumerate(init)]
    settings = phase_settings({"iterations": 6, "lr": 1e-3, "lr_min": 1e-5, "check_every": 3}, "basic")
    warm = warm_start.WarmStart(lrs=lrs, steps=2)
    with_warm = engine.fit_images(images, spec, settings, init=init, warm=warm, use_compile=False, slots=2)
    stepped = warm_start.warm_start(init, lrs, images, spec, 2, chunk_items=2)
    assert not torch.allclose(stepped[0], init[0])
    plain = engine.fit_images(images, spec, settings, init=stepped, use_compile=False)
    for a, b in zip(with_warm.params, plain.params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (with_warm.iterations == plain.iterations + 2).all()
    torch.testing.assert_close(torch.as_tensor(with_warm.psnr_before), torch.as_tensor(plain.psnr_before))

    # the calibrated factor scales the Adam phase's whole schedule
    slower = engine.fit_images(images, spec, settings, init=init, use_compile=False,
                               warm=warm_start.WarmStart(lrs=lrs, steps=2, adam_lr_factor=0.25))
    halved = dataclasses.replace(settings, lr=settings.lr * 0.25, lr_min=settings.lr_min * 0.25)
    reference = engine.fit_images(images, spec, halved, init=stepped, use_compile=False)
    for a, b in zip(slower.params, reference.params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(slower.params[0], with_warm.params[0])


def test_meta_sgd_learns_an_init_that_fits_faster_than_the_siren_init():
    """On train images, the learned init and rates beat the SIREN init with the starting rates after the inner steps."""
    from izoo.siren import model as siren
    from izoo.siren import warm_start
    from izoo.siren.family import SirenFamily

    family = SirenFamily({"family": "siren", "depth": 3, "width": 16, "w0": 30.0}, {"compile": "off"})
    grid = torch.linspace(0, 1, 8)
    images = torch.stack([torch.stack([(grid[None, :] * a + grid[:, None] * (1 - a)) for _ in range(3)])
                          for a in torch.linspace(0.1, 0.9, 6)])
    settings = meta_init.MetaInitSettings.from_config({"items": 6, "outer_steps": 40, "inner_steps": 2,
                                                       "meta_batch": 3})
    res = meta_init.meta_sgd(images, family, settings)
    coords = siren.coordinate_grid(8, 8).reshape(-1, 2)
    names = family.param_names()

    def psnr_after(params, lrs):
        batch = [torch.as_tensor(p).unsqueeze(0).expand(6, *p.shape).contiguous() for p in params]
        phi = warm_start.sgd_steps(batch, [torch.as_tensor(a) for a in lrs], warm_start.targets(images), coords,
                                   30.0, settings.inner_steps)
        return float(warm_start.item_psnr(phi, images, coords, 30.0).mean())

    base = [p[0] for p in siren.init_params(family.spec, [42])]
    siren_psnr = psnr_after(base, [torch.full_like(p, settings.inner_lr) for p in base])
    learned_psnr = psnr_after([res.params[n] for n in names], [res.inner_lrs[n] for n in names])
    assert learned_psnr > siren_psnr + 3.0, (siren_psnr, learned_psnr)
