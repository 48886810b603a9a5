"""What the benchmark scripts share: device sync for timers, best-of timing, a markdown table printer, and the
measurements more than one script reports (fp32 matmul GFLOP/s, the paper-style one-at-a-time SIREN loop, the
engine's warm-up). Scripts import it as ``_common`` (they run from ``benchmarks/``, which Python puts on the path).
Devices come from ``izoo.devices.resolve_device``."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from izoo.fitting.phases import phase_settings
from izoo.siren import engine
from izoo.siren import model as siren


def sync(device: torch.device) -> None:
    """Wait for the device, so a timer read after it covers the queued GPU work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """Best wall-clock seconds of ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def print_markdown_table(rows: list[dict]) -> None:
    """A Markdown table of the rows."""
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    sys.stdout.flush()


def train_flops_per_pixel(spec: siren.SirenSpec) -> int:
    """Matmul FLOPs of one training step at one pixel: forward, weight gradients, input gradients (not layer 0)."""
    dims = spec.layer_dims()
    fwd = sum(2 * i * o for i, o in dims)
    return fwd + fwd + sum(2 * i * o for i, o in dims[1:])


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 5, trials: int = 3) -> float:
    """Best-of-``trials`` fp32 GFLOP/s of ``n×n @ n×n`` on ``device`` (TF32 if the device allows it)."""
    if device.type == "cuda":
        n, reps = 8192, 20
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = 0.0
    for _ in range(trials):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def fit_one_at_a_time(images: torch.Tensor, spec: siren.SirenSpec, iterations: int,
                      device: torch.device = torch.device("cpu")) -> tuple[float, np.ndarray]:
    """Paper-style loop; returns seconds and per-image PSNR."""
    height, width = images.shape[2:]
    images = images.to(device)
    coords = siren.coordinate_grid(height, width, device=device)
    init = siren.init_params(spec, [42] * len(images))
    psnrs = []
    t0 = time.perf_counter()
    for k in range(len(images)):
        model = siren.Siren.from_params(spec, init, k).to(device)
        target = siren.normalise(images[k]).reshape(3, -1).t()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iterations, eta_min=1e-5)
        for _ in range(iterations):
            opt.zero_grad(set_to_none=True)
            F.mse_loss(model(coords), target).backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            pred = siren.denormalise_rgb(model(coords)).clamp(0, 1)
            mse = (pred - images[k].reshape(3, -1).t()).pow(2).mean()
        psnrs.append(float(-10 * torch.log10(mse)))
    sync(device)
    return time.perf_counter() - t0, np.array(psnrs)


def warm_up_engine(batch: torch.Tensor, spec: siren.SirenSpec, device: torch.device, use_compile: bool) -> float:
    """A 2-step fit of 4 items (compiles the step when ``use_compile``); returns its seconds."""
    t0 = time.perf_counter()
    engine.fit_images(batch[:4], spec, phase_settings({"iterations": 2}, "basic"), seeds=[42] * 4, device=device,
                      use_compile=use_compile)
    return time.perf_counter() - t0
