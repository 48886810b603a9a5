"""The torch device a fit runs on, from the ``fit:`` section (``IZOO_DEVICE`` in the environment overrides it)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from izoo.devices import resolve_device
from izoo.fitting.phases import as_fit_config


def default_device(fit_cfg: Mapping[str, Any] | None) -> torch.device:
    """The device a ``fit:`` section asks for (``IZOO_DEVICE`` in the environment overrides it)."""
    cfg = as_fit_config(fit_cfg)
    return resolve_device(os.environ.get("IZOO_DEVICE") or cfg.device, tf32=cfg.tf32, setting="fit.device",
                          source="config.yaml")
