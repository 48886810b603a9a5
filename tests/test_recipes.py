"""Fitting recipes (paper / released / gate), per-item stopping settings and the slot refill order."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from izoo.config import load_config, resolve_recipe
from izoo.errors import IzooError
from izoo.siren import engine
from izoo.fitting.phases import phase_settings
from izoo.recipes import RECIPES
from izoo.siren import model as siren


def _ds(**extra):
    return {"source": {"format": "cifar10", "root": "x"}, "model": {"family": "siren"}, **extra}


def _load(tmp_path, ds):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"d": ds}, "benchmarks": {}}))
    return load_config(path)["datasets"]["d"]


def test_each_recipe_sets_what_it_reproduces(tmp_path):
    paper = _load(tmp_path, _ds())
    assert paper["recipe"] == "paper" and paper["model"]["init"] == "siren" and paper["fit"]["stop"] == "budget"
    st = phase_settings(paper["fit"], "basic")
    assert (st.stop_on_pass, st.max_steps, st.lr, st.lr_min) == (False, 1000, 1e-3, 1e-5)

    released = _load(tmp_path, _ds(recipe="released"))
    assert released["model"]["init"] == "released"
    st = phase_settings(released["fit"], "basic")
    assert (st.stop_on_pass, st.min_steps, st.max_steps, st.check_every, st.gate_psnr) == (True, 500, 5000, 1, 30.0)
    assert st.lr_at(0) == st.lr_at(4999) == 2e-3        # Adam 2e-3, no schedule

    gate = _load(tmp_path, _ds(recipe="gate"))
    st = phase_settings(gate["fit"], "basic")
    assert gate["model"]["init"] == "siren" and (st.stop_on_pass, st.min_steps, st.check_every) == (True, 0, 1)
    assert st.lr_at(0) == 1e-3 and st.lr_at(1000) == pytest.approx(1e-5)   # the paper's schedule, budget = cap


def test_dataset_keys_win_over_the_recipe_and_resolving_is_idempotent(tmp_path):
    ds = _load(tmp_path, _ds(recipe="released", fit={"iterations": 800, "min_iterations": 100}))
    assert ds["fit"]["iterations"] == 800 and ds["fit"]["min_iterations"] == 100 and ds["fit"]["lr"] == 2e-3
    assert resolve_recipe(ds) == ds
    assert set(RECIPES) == {"paper", "released", "gate"}


@pytest.mark.parametrize("ds,words", [
    (_ds(recipe="fast"), "unknown fitting recipe 'fast'"),
    ({"source": {"format": "scenes", "root": "x"}, "model": {"family": "nerf"}, "recipe": "gate"}, "2D SIREN"),
    (_ds(recipe="gate", fit={"iterations": 50, "min_iterations": 60}), "min_iterations (60) is larger"),
    (_ds(fit={"stop": "early"}), "fit.stop"),
    (_ds(fit={"min_iterations": "ten"}), "fit.min_iterations"),
])
def test_bad_recipe_settings_are_one_line_errors(tmp_path, ds, words):
    with pytest.raises(IzooError) as err:
        _load(tmp_path, ds)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_direct_phase_settings_reject_bad_stop_values():
    """phase_settings checks a hand-made fit: section against the schema too (no jsonschema needed)."""
    with pytest.raises(IzooError, match=r"fit\.stop: 'never' is not one of \['budget', 'gate'\]"):
        phase_settings({"stop": "never"}, "basic")
    with pytest.raises(IzooError, match="larger than fit.iterations"):
        phase_settings({"stop": "gate", "iterations": 10, "min_iterations": 11}, "basic")
    with pytest.raises(IzooError, match=r"fit\.min_iterations: 2\.5 is not of type 'integer'"):
        phase_settings({"min_iterations": 2.5}, "basic")


def test_released_init_matches_the_released_layers():
    """Released code: every sine layer U(±sqrt(6/in)/w0) with zero bias; the head is a default nn.Linear."""
    spec = siren.SirenSpec(depth=3, width=64, init="released")
    params = siren.init_params_single(spec, 0)
    w0, b0, w1, b1, w2, b2 = params
    for w in (w0, w1):
        bound = math.sqrt(6.0 / w.shape[1]) / 30.0
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert not b0.any() and not b1.any()
    head = torch.nn.Linear(64, 3)   # independent reference of PyTorch's default bounds
    bound = 1.0 / math.sqrt(64)
    assert w2.abs().max() <= bound and b2.abs().max() <= bound and b2.abs().max() > 0.3 * bound
    assert head.weight.abs().max() <= bound and w2.abs().max() > 0.9 * bound


def test_gate_stop_and_slot_refill_order():
    """An item leaves at the first step past the gate (never before min_iterations); the next unstarted item
    takes its slot at step 0, in job order, with its own step counter."""
    spec = siren.SirenSpec(depth=3, width=16)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 8, 8, generator=gen)
    images[0] = 0.5      # flat: passes at once
    images[3] = 0.45
    settings = phase_settings({"iterations": 400, "stop": "gate", "min_iterations": 4, "check_every": 1,
                               "gate_psnr": 28.0, "lr": 1e-2, "lr_min": 1e-4}, "basic")
    fitter = engine.SirenBatchFit(spec, images, settings, siren.init_params(spec, [1] * 5), use_compile="off",
                                  slots=2)
    history = []
    real = fitter._train

    def spy(check):
        history.append((fitter.pos.tolist(), fitter.steps.tolist()))
        return real(check)

    fitter._train = spy
    res = fitter.run()
    assert history[0] == ([0, 1], [0, 0])
    assert res.iterations[0] == 4 and (res.iterations >= 4).all()        # min_iterations holds
    joined = next(k for k, (pos, _) in enumerate(history) if 2 in pos)
    assert history[joined] == ([1, 2], [5, 0])                           # item 2 took item 0's slot at step 0
    order = [next(k for k, (pos, _) in enumerate(history) if i in pos) for i in range(5)]
    assert order == sorted(order)                                        # items start in job order
    assert res.passed.all() and (res.psnr >= 28.0).all()
    assert max(len(pos) for pos, _ in history) == 2
    # each item's weights are those of a fit on its own (its trajectory does not depend on its slot)
    alone = engine.fit_images(images[2:3], spec, settings, init=siren.init_params(spec, [1]), use_compile="off")
    np.testing.assert_allclose(res.params[0][2], alone.params[0][0], rtol=1e-5, atol=1e-6)
    assert res.iterations[2] == alone.iterations[0]
