"""Registry of model families, so the same shard machinery fits SIRENs (2D) and NeRFs (3D).

A family is a class registered under a name (``register_family(name, cls)``) and built per dataset as
``cls(model_cfg, fit_cfg)`` (the dataset config's ``model:`` and ``fit:`` sections). It must provide:

==============================================  ============================================================
member                                          meaning
==============================================  ============================================================
``name: str``                                   family name stored as the file attribute ``model_family``
``param_shapes() -> dict[str, tuple]``          per-item shape of every parameter tensor, in file order
                                                (SIREN: ``layer{i}.weight`` ``(out, in)``, ``layer{i}.bias`` ``(out,)``)
``architecture() -> dict``                      model config for the file attribute ``architecture``
                                                (must include ``layer_shapes``)
``file_attrs() -> dict``                        further attributes (``normalisation``, ``coordinate_convention``)
``init(seeds) -> dict[str, ndarray]``           initial parameters ``[n, *shape]`` for per-item seeds
``fit_batch(samples, init_params, seeds,        fit the samples in one phase, ``slots`` at a time (continuous
  settings, device, checkpoint, progress,       batching, ``izoo.fitting.stream``); ``init_params`` is ``None``
  slots, on_group) -> FitResult | None``        (start from ``init(seeds)``) or a dict like ``init``'s;
                                                ``settings`` is a ``PhaseSettings``; ``checkpoint`` a
                                                ``BatchCheckpoint`` (resume state, periodic saves, stop requests →
                                                save + ``FitInterrupted``); ``progress(finished, total, n_active,
                                                mean_psnr)`` or ``None``; with ``on_group`` finished items are
                                                handed out in groups (``FitResult`` with ``positions``) and ``None``
                                                is returned, else one ``FitResult`` of all samples
``extras(samples) -> dict[str, ndarray]``       per-item arrays stored under ``/extras`` (e.g. ``label_map``)
==============================================  ============================================================

Families register themselves when their module is imported (timm style); ``get_family`` imports the built-in
ones (``siren`` → ``izoo.siren.family``, ``nerf`` → ``izoo.nerf.family``) by module path on first use.
"""

from __future__ import annotations

import importlib

from izoo.errors import IzooError

_FAMILIES: dict[str, type] = {}
#: built-in families by the module that registers them on import (imported on first use, so the generic
#: machinery never imports a family)
_BUILTIN = {"siren": "izoo.siren.family", "nerf": "izoo.nerf.family"}


def register_family(name: str, cls: type) -> type:
    """Register a model family class under ``name`` (usable as a decorator argument's result)."""
    _FAMILIES[name] = cls
    return cls


def get_family(name: str) -> type:
    """The family class registered as ``name`` (imports a built-in family's module first)."""
    if name not in _FAMILIES and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _FAMILIES:
        raise IzooError(f"unknown model family {name!r}", "config.yaml",
                        f"set model.family to one of {', '.join(sorted(set(_FAMILIES) | set(_BUILTIN)))}")
    return _FAMILIES[name]
