"""Which torch device a run uses: one rule for ``izoo fit``, the benchmarks and the benchmark scripts.

``auto`` is CUDA when a GPU is visible, else the CPU; ``cpu``, ``cuda`` and ``cuda:<n>`` are taken as given. The
TF32 switch is set here because it belongs to the device choice (it changes results, so callers record it).
"""

from __future__ import annotations

import torch

from izoo.errors import IzooError


def resolve_device(name: str = "auto", tf32: bool | None = None, setting: str = "--device",
                   source: str | None = None) -> torch.device:
    """``auto`` → CUDA when available, else CPU; on CUDA, ``tf32`` (when given) sets torch's TF32 matmul switches.

    ``setting`` and ``source`` name where the value came from (``fit.device`` in ``config.yaml``, ``--device``) so
    a bad value is a one-line ``IzooError`` pointing there.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise IzooError(f"unknown {setting} {name!r}", source, "use auto, cpu or cuda") from exc
    if device.type not in ("cpu", "cuda"):
        raise IzooError(f"unknown {setting} {name!r}", source, "use auto, cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise IzooError(f"{setting} is {name!r} but no CUDA device is visible", source,
                            f"set {setting} to auto or cpu, or run on a GPU node")
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
            torch.backends.cudnn.allow_tf32 = bool(tf32)
    return device
