"""Batched SIREN engine: equivalence with per-image fitting, PSNR, phases, in-batch resume, OOM halving."""

from __future__ import annotations

import math
import types

import numpy as np
import pandas as pd
import pytest
import torch

from izoo.archive import layout
from izoo.fitting import refine
from izoo.fitting.batch import BatchCheckpoint
from izoo.fitting.shard import fit_shard
from izoo.fitting.stream import FitInterrupted
from izoo.siren import engine
from izoo.siren.engine import fit_images
from izoo.siren.family import SirenFamily
from izoo.fitting.phases import phase_settings
from izoo.errors import IzooError
from izoo.siren import model as siren



def _reference_fit(spec, init, item, image01, steps, lr=1e-3, lr_min=1e-5):
    """Paper-style: one nn.Module SIREN, torch.optim.Adam, CosineAnnealingLR, nn.MSELoss in normalised space."""
    model = siren.Siren.from_params(spec, init, item).to(image01.dtype)
    coords = siren.coordinate_grid(*image01.shape[1:]).to(image01.dtype)
    target = siren.normalise(image01).reshape(3, -1).t()
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr_min)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(coords), target).backward()
        opt.step()
        sched.step()
    return [t.detach() for layer in model.layers for t in (layer.weight, layer.bias)]


@pytest.mark.parametrize("depth,init_kind", [(3, "siren"), (4, "released")])
def test_batched_fit_equals_per_image_fit(depth, init_kind):
    spec = siren.SirenSpec(depth=depth, width=12, init=init_kind)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 6, 7, generator=gen, dtype=torch.float64)
    init = [p.double() for p in siren.init_params(spec, [1, 2, 3])]
    steps = 25
    res = fit_images(images, spec, phase_settings({"iterations": steps, "check_every": 10}, "basic"), init=init,
                     use_compile="off")
    for item in range(3):
        ref = _reference_fit(spec, init, item, images[item], steps)
        for got, want in zip(res.params, ref):
            torch.testing.assert_close(got[item], want, rtol=1e-9, atol=1e-10)
    # the fitted weights render through the shared functional forward to the PSNR the engine reports
    rendered = siren.render([p.float() for p in res.params], spec, 6, 7)
    expected = -10 * torch.log10((rendered - images.float()).pow(2).mean(dim=(1, 2, 3)))
    np.testing.assert_allclose(res.psnr, expected.numpy(), rtol=1e-5)
    assert (res.iterations == steps).all()


def test_psnr_on_denormalised_clamped_pixels():
    spec = siren.SirenSpec(depth=2, width=4)
    init = [torch.zeros(2, *s) for s in spec.param_shapes()]  # output 0 in normalised space = the ImageNet mean
    mean = torch.tensor(siren.IMAGENET_MEAN).view(3, 1, 1)
    images = torch.stack([(mean + 0.1).expand(3, 4, 4), (mean - 0.01).expand(3, 4, 4)]).contiguous()
    res = fit_images(images, spec, phase_settings({"iterations": 1}, "basic"), init=init, use_compile="off")
    np.testing.assert_allclose(res.psnr_before, [20.0, 40.0], rtol=1e-4)
    # clamping: predicting 2.0 for a white image costs nothing after the clamp to [0, 1]
    std = torch.tensor(siren.IMAGENET_STD)
    init[-1][:] = (2.0 - torch.tensor(siren.IMAGENET_MEAN)) / std
    white = torch.ones(2, 3, 4, 4)
    res = fit_images(white, spec, phase_settings({"iterations": 1}, "basic"), init=init, use_compile="off")
    assert (res.psnr_before > 100).all()


def _easy_and_hard(n_hard=2, size=8):
    gen = torch.Generator().manual_seed(3)
    easy = torch.tensor([0.2, 0.5, 0.7]).view(1, 3, 1, 1).expand(2, 3, size, size)
    hard = torch.rand(n_hard, 3, size, size, generator=gen)
    return torch.cat([easy, hard]).contiguous()


def test_refinement_phases_only_touch_failing_items():
    spec = siren.SirenSpec(depth=3, width=16)
    images = _easy_and_hard()
    cfg = {"iterations": 60, "check_every": 10, "gate_psnr": 35.0, "lr": 1e-2, "lr_min": 1e-4,
           "extended": {"factor": 2, "patience": 20, "min_delta": 0.05}, "until_threshold": {"cap_iterations": 30}}
    basic = fit_images(images, spec, phase_settings(cfg, "basic"), seeds=[42] * 4, use_compile="off")
    assert basic.passed[:2].all() and not basic.passed[2:].any()
    ext = fit_images(images, spec, phase_settings(cfg, "extended"), init=basic.params, use_compile="off")
    # passing items leave at the first check: 0 steps, weights untouched
    assert (ext.iterations[:2] == 0).all()
    for got, start in zip(ext.params, basic.params):
        torch.testing.assert_close(got[:2], start[:2], rtol=0, atol=0)
    # failing items trained, never ended worse than they came in, and the stall rule stopped them early
    assert (ext.iterations[2:] > 0).all() and (ext.iterations[2:] < 120).all()
    assert (ext.psnr[2:] >= ext.psnr_before[2:]).all()
    np.testing.assert_allclose(ext.psnr_before, basic.psnr, rtol=1e-5)



def test_three_phases_through_the_shard_driver_refine_only_failing_items(tmp_path):
    """basic on every item, extended on the items below the gate, until_threshold on those still below it: the
    real driver (``fit_shard`` per phase, refinement plans from the reports)."""
    images = _easy_and_hard()
    n = len(images)
    manifest = pd.DataFrame({"index": range(n), "split": ["train"] * n, "item_id": [f"img{i}" for i in range(n)],
                             "label": [0] * n, "source_id": [f"f{i}.png" for i in range(n)],
                             "shard": ["train-00000"] * n})
    load = lambda row: types.SimpleNamespace(item_id=row["item_id"], label=0, image=images[int(row["index"])],  # noqa: E731
                                             label_map=None)
    cfg = {"source": {"format": "folder", "root": "items-come-from-the-loader"},
           "model": {"family": "siren", "depth": 3, "width": 16, "w0": 30, "init": "siren"},
           "seed": {"mode": "shared", "value": 42},
           "fit": {"iterations": 60, "check_every": 10, "gate_psnr": 35.0, "lr": 1e-2, "lr_min": 1e-4,
                   "device": "cpu", "compile": "off", "extended": {"factor": 2, "patience": 20, "min_delta": 0.05},
                   "until_threshold": {"cap_iterations": 30}}}
    out = fit_shard(manifest, load, cfg, tmp_path / "w-basic", "basic")
    out.write(tmp_path / "basic.h5", tmp_path / "basic.csv")
    report = tmp_path / "basic.csv"
    for phase in ("extended", "until_threshold"):
        plan = refine.plan_refinement([report], phase, job_size=16)
        assert plan["n_failing"] == 2      # the two noise images; the flat ones passed in basic
        out = fit_shard(refine.job_items(plan, "job-0000", manifest), load, cfg, tmp_path / f"w-{phase}", phase)
        out.write(tmp_path / f"{phase}.h5", tmp_path / f"{phase}.csv")
        report = tmp_path / f"{phase}.csv"
    basic = layout.read_inr_file(tmp_path / "basic.h5").items
    assert basic["passed"].tolist() == [True, True, False, False] and (basic["iterations"] == 60).all()
    final = layout.read_inr_file(tmp_path / "until_threshold.h5").items
    assert final["index"].tolist() == [2, 3] and (final["phase"] == "until_threshold").all()
    assert ((final["iterations"] > 60) & (final["iterations"] <= 60 + 120 + 30)).all()
    assert not final["passed"].any()   # random noise never reaches 35 dB: reported as failing, not dropped


def test_stopped_items_leave_the_batch():
    spec = siren.SirenSpec(depth=3, width=8)
    images = _easy_and_hard(n_hard=1)
    settings = phase_settings({"iterations": 60, "check_every": 5, "gate_psnr": 30.0, "lr": 1e-2, "lr_min": 1e-4,
                               "extended": {"factor": 1, "patience": 1000}}, "extended")
    fitter = engine.SirenBatchFit(spec, images, settings, siren.init_params(spec, [42] * 3), use_compile="off")
    sizes = []
    original = fitter.train_step

    def spy(theta, *args):
        sizes.append(theta.shape[0])
        return original(theta, *args)

    fitter.train_step = spy
    res = fitter.run()
    assert sizes[0] == 3 and sizes[-1] < 3  # easy items stopped at a check, so later steps compute fewer items
    assert res.iterations[2] == 60 and (res.iterations[:2] < 60).all()


@pytest.mark.parametrize("phase", ["basic", "extended"])
def test_resume_from_in_batch_checkpoint_is_bitwise_identical(phase):
    spec = siren.SirenSpec(depth=3, width=8)
    images = _easy_and_hard(n_hard=2)
    cfg = {"iterations": 30, "check_every": 5, "checkpoint_every": 10, "gate_psnr": 32.0,
           "extended": {"factor": 2, "patience": 15}}
    settings = phase_settings(cfg, phase)
    init = siren.init_params(spec, [42] * 4)
    whole = fit_images(images, spec, settings, init=init, use_compile="off")

    saved = []
    calls = {"n": 0}

    def stop_after_23_steps():
        calls["n"] += 1
        return calls["n"] > 23

    with pytest.raises(FitInterrupted):
        fit_images(images, spec, settings, init=init, use_compile="off", should_stop=stop_after_23_steps,
                   on_checkpoint=saved.append)
    assert [s["step_count"] for s in saved][-1] >= 20 and len(saved) >= 2
    resumed = fit_images(images, spec, settings, init=init, use_compile="off", resume_state=saved[-1])
    for a, b in zip(whole.params, resumed.params):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(whole.iterations, resumed.iterations)
    np.testing.assert_array_equal(whole.psnr, resumed.psnr)


def test_out_of_memory_halves_the_batch_and_goes_on(monkeypatch, capsys, tmp_path):
    family = SirenFamily({"depth": 3, "width": 8}, {"compile": "off"})
    images = _easy_and_hard(n_hard=3)
    samples = [type("S", (), {"image": img, "label_map": None, "item_id": str(k)})() for k, img in enumerate(images)]
    settings = phase_settings({"iterations": 10, "check_every": 5}, "basic")
    whole = family.fit_batch(samples, None, [42] * 5, settings, "cpu")

    real = engine._TrainSteps.__call__
    seen = []

    def small_memory(self, theta, *args):
        seen.append(theta.shape[0])
        if theta.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")
        return real(self, theta, *args)

    monkeypatch.setattr(engine._TrainSteps, "__call__", small_memory)
    halved = family.fit_batch(samples, None, [42] * 5, settings, "cpu",
                              BatchCheckpoint(tmp_path / "b.ckpt", "fp"))
    assert seen[:3] == [5, 2, 2] and max(seen[1:]) == 2   # halved once, the evicted items fitted later
    assert "halving the batch to 2 items" in capsys.readouterr().err
    for name in whole.params:
        np.testing.assert_allclose(halved.params[name], whole.params[name], rtol=1e-5, atol=1e-6)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(fn, **_kwargs):
        def fail(*_a, **_k):
            raise RuntimeError("no compiler here")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(engine._TrainSteps, "compiled", {})
    monkeypatch.setattr(engine._TrainSteps, "broken", False)
    spec = siren.SirenSpec(depth=3, width=8)
    images = _easy_and_hard(n_hard=1)
    settings = phase_settings({"iterations": 5}, "basic")
    forced = fit_images(images, spec, settings, seeds=[1] * 3, use_compile="on")
    eager = fit_images(images, spec, settings, seeds=[1] * 3, use_compile="off")
    assert engine._TrainSteps.broken
    for a, b in zip(forced.params, eager.params):
        assert torch.equal(a, b)


def test_cosine_schedule_matches_torch():
    settings = phase_settings({"iterations": 10, "lr": 1e-3, "lr_min": 1e-5}, "basic")
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=1e-5)
    for step in range(10):
        assert math.isclose(settings.lr_at(step), opt.param_groups[0]["lr"], rel_tol=1e-9)
        opt.step()
        sched.step()


def test_phase_settings_from_config():
    basic = phase_settings({"iterations": 300}, "basic")
    assert (basic.max_steps, basic.stop_on_pass, basic.keep_best, basic.patience) == (300, False, False, None)
    ext = phase_settings({"iterations": 300, "extended": {"factor": 1.5, "patience": 150}}, "extended")
    assert (ext.max_steps, ext.stop_on_pass, ext.keep_best, ext.patience, ext.min_delta) == (450, True, True, 150, 0.05)
    until = phase_settings({"until_threshold": {"cap_iterations": 1200}}, "until_threshold")
    assert (until.max_steps, until.stop_on_pass, until.patience) == (1200, True, None)
    with pytest.raises(IzooError, match="extended.factor"):
        phase_settings({"extended": {"factor": 0}}, "extended")
    with pytest.raises(IzooError, match="unknown fitting phase"):
        phase_settings({}, "polish")


def test_chunked_steps_equal_one_batch():
    # the CPU path feeds the batch through the step in cache-sized chunks; items must not notice
    spec = siren.SirenSpec(depth=4, width=12)
    images = torch.rand(5, 3, 6, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    init = [p.double() for p in siren.init_params(spec, [1, 2, 3, 4, 5])]
    settings = phase_settings({"iterations": 12, "check_every": 4}, "basic")
    whole = engine.SirenBatchFit(spec, images, settings, init, use_compile="off", chunk_items=5).run()
    chunked = engine.SirenBatchFit(spec, images, settings, init, use_compile="off", chunk_items=2).run()
    for a, b in zip(whole.params, chunked.params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(whole.psnr, chunked.psnr, rtol=1e-6)


def test_compiled_step_equals_eager_step():
    # the compiled graph uses other formulations (angle addition, element-wise head gradient): same maths
    spec = siren.SirenSpec(depth=3, width=16)
    images = torch.rand(3, 3, 6, 9, generator=torch.Generator().manual_seed(2))   # not square: rows != cols
    settings = phase_settings({"iterations": 8, "check_every": 4}, "basic")
    eager = fit_images(images, spec, settings, seeds=[1, 2, 3], use_compile="off")
    compiled = fit_images(images, spec, settings, seeds=[1, 2, 3], use_compile="on")
    if engine._TrainSteps.broken:
        pytest.skip("torch.compile has no working toolchain here (the engine fell back to eager)")
    for a, b in zip(eager.params, compiled.params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eager.psnr, compiled.psnr, atol=1e-3)
