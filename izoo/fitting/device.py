"""The torch device a fit runs on, from the ``fit:`` section (``IZOO_DEVICE`` in the environment overrides it)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from izoo.errors import IzooError
from izoo.fitting.phases import as_fit_config


def resolve_device(name: str = "auto", tf32: bool = True) -> torch.device:
    """``auto`` → CUDA when available, else CPU; sets the TF32 matmul switch on CUDA (recorded by the caller)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise IzooError("fit.device is 'cuda' but no CUDA device is visible", "config.yaml",
                            "set fit.device to auto or cpu, or run on a GPU node")
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
        torch.backends.cudnn.allow_tf32 = bool(tf32)
    elif name != "cpu":
        raise IzooError(f"unknown fit.device {name!r}", "config.yaml", "use auto, cpu or cuda")
    return torch.device(name)


def default_device(fit_cfg: Mapping[str, Any] | None) -> torch.device:
    """The device a ``fit:`` section asks for (``IZOO_DEVICE`` in the environment overrides it)."""
    cfg = as_fit_config(fit_cfg)
    return resolve_device(os.environ.get("IZOO_DEVICE") or cfg.device, tf32=cfg.tf32)
