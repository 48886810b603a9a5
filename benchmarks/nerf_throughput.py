"""NeRF fitting throughput: scenes/hour fitting B scenes at once (stacked weights, one Adam) vs one at a time.

Times ``izoo.nerf.fitting.NerfBatchFit`` training steps on procedural scenes (analytic spheres, so nothing is
read from disk) and extrapolates to the configured step budget (20k steps in the paper):
``scenes/hour = 3600 · B / (steps · seconds_per_step(B))``. Held-out evaluations are not included (``basic``
runs one at the start and one at the end). Prints a markdown table.

    python benchmarks/nerf_throughput.py                                   # paper model and rays, auto device
    python benchmarks/nerf_throughput.py --device cpu --rays 256 --batch-sizes 1 2 4 --steps 5
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from _common import sync
from izoo.fitting.phases import phase_settings
from izoo.nerf.fitting import NerfBatchFit, RenderSettings
from izoo.nerf.model import NerfSpec, init_params
from izoo.nerf.synthetic import procedural_scene


def seconds_per_step(batch: int, spec: NerfSpec, render: RenderSettings, size: int, steps: int, warmup: int,
                     device: torch.device) -> tuple[float, float]:
    """Mean wall-clock and process-CPU seconds of one training step of ``batch`` scenes (after ``warmup`` steps).

    CPU time is reported too because on a shared machine wall time mostly measures the other jobs.
    """
    scenes = [procedural_scene(size=size, n_train=8, n_test=1, centre=(0.1 * k, 0.0, 0.0), n_samples=64)
              for k in range(batch)]
    settings = phase_settings({"iterations": steps + warmup, "lr": 5e-4, "lr_min": 5e-5}, "basic")
    fitter = NerfBatchFit(spec, scenes, settings, render, init_params(spec, [42] * batch), device=device)
    fitter.advance(warmup)
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    fitter.advance(steps)
    sync(device)
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu_start) / steps


def main() -> None:
    """Parse arguments, time each batch size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget", type=int, default=20000, help="steps per scene to extrapolate to")
    parser.add_argument("--rays", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--size", type=int, default=32, help="image size of the procedural scenes (cost-neutral)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    spec = NerfSpec(depth=args.depth, width=args.width)
    render = RenderSettings(rays_per_batch=args.rays, samples_per_ray=args.samples)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    print(f"NeRF {args.depth}/{args.width} (pos 10 / dir 4 freqs), {args.rays} rays x {args.samples} samples per "
          f"scene-step, {args.steps} timed steps; {where}; torch {torch.__version__}\n")
    clock = "CPU" if device.type == "cpu" else "wall"
    print(f"| scenes per job (B) | wall s / step | CPU s / step | scene-steps / s ({clock}) | scenes / hour at "
          f"{args.budget} steps ({clock}) | speed-up vs B=1 |")
    print("|---:|---:|---:|---:|---:|---:|")
    base = None
    for batch in args.batch_sizes:
        try:
            wall, cpu = seconds_per_step(batch, spec, render, args.size, args.steps, args.warmup, device)
        except torch.OutOfMemoryError:
            print(f"| {batch} | out of memory | | | | |")
            break
        sec = cpu if device.type == "cpu" else wall
        per_hour = 3600.0 * batch / (args.budget * sec)
        base = base or per_hour
        print(f"| {batch} | {wall:.4f} | {cpu:.4f} | {batch / sec:.1f} | {per_hour:.2f} | {per_hour / base:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
