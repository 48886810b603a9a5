"""Named fitting recipes for 2D (SIREN) datasets: one ``recipe:`` key selects the init, schedule and stop rule.

A recipe is a set of ``model:`` and ``fit:`` defaults; what a dataset's config says itself wins over it, and the
schema's defaults fill what neither says. Recipes are resolved once, when the config is validated
(``izoo.config.resolve_recipe``), and again (idempotently) when an ``izoo`` CLI parses its ``--dataset-config``.
This module is the recipes' table only (it imports nothing of izoo, so the config can import it).

=========  ===============================================================================================
recipe     what it reproduces
=========  ===============================================================================================
paper      the paper's text (the shipped default): SIREN init, Adam ``lr`` with a cosine schedule to
           ``lr_min`` over ``iterations``, every item trains the whole budget (``fit.stop: budget``)
released   the paper's released generator (``experiments/generate_cifar_dataset_siren.py`` of the public
           Implicit-Zoo code): first layer initialised like the others and zero sine biases with PyTorch's
           default ``nn.Linear`` head (``model.init: released``), Adam 2e-3 without schedule, PSNR checked every
           step, an item stops once it passed 30 dB after at least 500 steps, at most 5000 steps
gate       the fast path: SIREN init and the paper's schedule over ``iterations`` steps, but each item stops at
           the first step at which it has passed the gate (``fit.stop: gate``, checked every step); the budget
           is only the cap, and items that reach it without passing go to refinement as usual
=========  ===============================================================================================

The measured cost and PSNR distribution of each recipe are in ``benchmarks/RESULTS.md`` (``fit_to_gate.py``).
"""

from __future__ import annotations

from typing import Any

DEFAULT_RECIPE = "paper"

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"model": {"init": "siren"}, "fit": {"stop": "budget"}},
    "released": {"model": {"init": "released"},
                 "fit": {"stop": "gate", "lr": 2.0e-3, "lr_min": 2.0e-3, "gate_psnr": 30.0, "min_iterations": 500,
                         "iterations": 5000, "check_every": 1}},
    "gate": {"model": {"init": "siren"}, "fit": {"stop": "gate", "check_every": 1}},
}
