"""Fit to the gate: the released recipe one image at a time vs. izoo ``paper`` (fixed budget) vs. izoo ``gate``
(continuous batching, each item stops at the first step past the gate), then a CIFAR-10-sized dataset end to end.

Part 1, side by side on the same CIFAR-like images (``izoo demo-data`` crops: object-sized, anti-aliased 32×32):
(a) the released generator's loop, one image at a time (``nn.Module`` SIREN with the released init, Adam 2e-3,
    PSNR checked before every step, stop at the gate after >= 500 steps, cap 5000);
(b) izoo ``paper``: all images batched, 1000 fixed steps (the compiled training step);
(c) izoo ``gate``: continuous batching through ``--slots`` slots, cap 1000;
(d) izoo ``released``: the released recipe through izoo's batched engine.
Each to the 30 dB and the 35 dB gate (``paper`` trains a fixed budget once and is scored at both): items/s, PSNR
mean / min / p5, steps mean / p90.

Part 2 (``--e2e-per-class N``, default 5000: 50,000 train + 10,000 test images): the dataset generated in the
official python-batch layout, then ``snakemake --profile profiles/local`` with the ``gate`` recipe to archives,
reports and Table 1 (``datasets`` target), timed wall-clock. The last line is

    SUMMARY fit-to-gate items=… wall_min=… items_per_s=… min_psnr=… speedup_vs_released_loop=…

(``speedup_vs_released_loop`` = end-to-end items/s over the released loop's items/s to 30 dB of part 1.)

    python benchmarks/fit_to_gate.py                    # both parts (~50 min on 2 CPU cores: part 2 alone 36 min)
    python benchmarks/fit_to_gate.py --e2e-per-class 0  # part 1 only
    python benchmarks/fit_to_gate.py --no-released-recipe  # without (d)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from _common import print_markdown_table, warm_up_engine
from izoo.datasets import open_source
from izoo.datasets.demo import make_cifar10
from izoo.siren import engine
from izoo.fitting.phases import phase_settings
from izoo.recipes import RECIPES
from izoo.siren import model as siren

REPO = Path(__file__).resolve().parent.parent
SPEC = siren.SirenSpec(depth=3, width=64, w0=30.0)


def load_images(root: Path, split: str, n: int) -> torch.Tensor:
    """The first ``n`` images ``[n, 3, 32, 32]`` of a CIFAR-format split, through izoo's own reader."""
    source = open_source({"format": "cifar10", "root": str(root), "splits": [split]})
    refs = source.list_items(split)[:n]
    return torch.stack([source.load(ref).image for ref in refs])


def released_loop(images: torch.Tensor, gate: float) -> dict[str, np.ndarray | float]:
    """The released generator's loop, one image at a time (its stop rule: PSNR of the pre-step output, unclamped,
    checked every step; the step is taken anyway; >= 500 steps; at most 5000)."""
    cfg = RECIPES["released"]["fit"]
    spec = siren.SirenSpec(depth=3, width=64, w0=30.0, init="released")
    coords = siren.coordinate_grid(32, 32)
    init = siren.init_params(spec, [42] * len(images))
    steps, psnrs = [], []
    t0 = time.perf_counter()
    for k in range(len(images)):
        model = siren.Siren.from_params(spec, init, k)
        target = siren.normalise(images[k]).reshape(3, -1).t()
        target01 = images[k].reshape(3, -1).t()
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        psnr, it = 0.0, 0
        while (psnr < gate or it < cfg["min_iterations"]) and it < cfg["iterations"]:
            opt.zero_grad(set_to_none=True)
            out = model(coords)
            loss = F.mse_loss(out, target)
            psnr = float(-10 * torch.log10(F.mse_loss(siren.denormalise_rgb(out.detach()), target01)))
            loss.backward()
            opt.step()
            it += 1
        with torch.no_grad():   # scored like izoo: clamped [0, 1] prediction of the saved weights
            pred = siren.denormalise_rgb(model(coords)).clamp(0, 1)
            psnrs.append(float(-10 * torch.log10((pred - target01).pow(2).mean())))
        steps.append(it)
    return {"seconds": time.perf_counter() - t0, "psnr": np.array(psnrs), "steps": np.array(steps)}


def izoo_fit(images: torch.Tensor, recipe: str, gate: float, slots: int, cap: int = 1000) -> dict:
    """One izoo recipe through the batched engine (compiled step), ``slots`` at a time."""
    fit = {**RECIPES[recipe]["fit"], "gate_psnr": gate}
    if recipe != "released":
        fit["iterations"] = cap
    spec = siren.SirenSpec(depth=3, width=64, w0=30.0, init=RECIPES[recipe]["model"]["init"])
    settings = phase_settings(fit, "basic")
    t0 = time.perf_counter()
    res = engine.fit_images(images, spec, settings, seeds=[42] * len(images), use_compile=True, slots=slots)
    return {"seconds": time.perf_counter() - t0, "psnr": res.psnr.astype(np.float64),
            "steps": res.iterations.astype(np.int64)}


def row(name: str, gate: float | None, r: dict, n: int) -> dict:
    """One table row: items/s (to the gate), PSNR and step statistics."""
    psnr, steps = r["psnr"], r["steps"]
    return {"method": name, "gate dB": "" if gate is None else f"{gate:g}", "items": n,
            "seconds": f"{r['seconds']:.1f}", "items/s": f"{n / r['seconds']:.2f}",
            "PSNR mean": f"{psnr.mean():.2f}", "PSNR min": f"{psnr.min():.2f}",
            "PSNR p5": f"{np.percentile(psnr, 5):.2f}", ">=30 dB": f"{(psnr >= 30).mean():.0%}",
            ">=35 dB": f"{(psnr >= 35).mean():.0%}", "steps mean": f"{steps.mean():.1f}",
            "steps p90": f"{np.percentile(steps, 90):.0f}"}


def part_compare(root: Path, n_loop: int, n_batch: int, slots: int, released_recipe: bool = True) -> float:
    """Part 1; returns the released loop's items/s to 30 dB."""
    images = load_images(root, "test", max(n_loop, n_batch))
    warm_up_engine(images, SPEC, torch.device("cpu"), True)   # compile once, outside the timings
    rows, loop_rate = [], 0.0
    for gate in (30.0, 35.0):
        loop = released_loop(images[:n_loop], gate)
        if gate == 30.0:
            loop_rate = n_loop / loop["seconds"]
        rows.append(row("released, one image at a time", gate, loop, n_loop))
        print(f"released loop {gate:g} dB done ({loop['seconds']:.1f} s)", flush=True)
    paper = izoo_fit(images[:n_batch], "paper", 30.0, slots=n_batch)
    rows.append(row("izoo paper (1000 steps, batched)", None, paper, n_batch))
    print(f"izoo paper done ({paper['seconds']:.1f} s)", flush=True)
    for gate in (30.0, 35.0):
        r = izoo_fit(images[:n_batch], "gate", gate, slots=slots)
        rows.append(row(f"izoo gate (continuous batching, {slots} slots)", gate, r, n_batch))
        print(f"izoo gate {gate:g} dB done ({r['seconds']:.1f} s)", flush=True)
    if released_recipe:
        rel = izoo_fit(images[:n_batch], "released", 30.0, slots=slots)
        rows.append(row(f"izoo released recipe ({slots} slots)", 30.0, rel, n_batch))
    print()
    print_markdown_table(rows)
    return loop_rate


def part_e2e(base: Path, per_class: int, slots: int, shard_size: int) -> dict:
    """Part 2: generate the dataset, run the workflow to archives + reports + Table 1; returns the figures."""
    data = base / "data"
    t0 = time.perf_counter()
    folder = make_cifar10(data, seed=0, n_per_class=per_class)
    gen_s = time.perf_counter() - t0
    n_expected = 10 * (per_class + per_class // 5)
    print(f"\ngenerated {n_expected} CIFAR-like images in {gen_s:.0f} s ({folder})", flush=True)
    for sub in ("results", "work", "logs"):
        shutil.rmtree(base / sub, ignore_errors=True)
    with open(REPO / "config.yaml") as fh:
        full = yaml.safe_load(fh)
    overlay = {
        "results": str(base / "results"), "workdir": str(base / "work"), "logs": str(base / "logs"),
        "datasets": {**{name: {"enabled": False} for name in full["datasets"]},
                     "cifar_like": {"source": {"format": "cifar10", "root": str(folder), "splits": ["train", "test"]},
                                    "recipe": "gate", "model": {"family": "siren", "depth": 3, "width": 64, "w0": 30.0},
                                    "fit": {"batch_size": slots, "iterations": 1000, "gate_psnr": 30.0,
                                            "checkpoint_every": 2000},
                                    "shard_size": shard_size, "refine_job_size": shard_size,
                                    "archive": {"virtual": True}}},
        "benchmarks": {name: {"enabled": False} for name in full["benchmarks"]},
    }
    cfg_path = base / "fit_to_gate.yaml"
    cfg_path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    # the target first: --configfile takes every path after it
    cmd = [sys.executable, "-m", "snakemake", "datasets", "--profile", "profiles/local", "--configfile", str(cfg_path)]
    print("$ " + " ".join(cmd), flush=True)
    # the rules call the `izoo` script: the one installed beside this interpreter, also when no venv is activated
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    (base / "snakemake.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed (exit {proc.returncode}); log: {base / 'snakemake.log'}\n"
                         + (proc.stdout + proc.stderr)[-3000:])
    items = pd.read_csv(base / "results" / "cifar_like" / "reports" / "items.csv")
    summary = (base / "results" / "summary.md").read_text()
    print(f"\nworkflow wall time {wall:.0f} s ({wall / 60:.1f} min); Table 1 (results/summary.md):\n")
    print(summary, flush=True)
    return {"items": len(items), "wall": wall, "min_psnr": float(items["psnr"].min()),
            "passed": int(items["passed"].sum()), "mean_steps": float(items["iterations"].mean())}


def main() -> None:
    """Run the parts and print the SUMMARY line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-loop", type=int, default=8, help="images fitted one at a time by the released loop")
    ap.add_argument("--n-batch", type=int, default=512, help="images fitted by each izoo recipe")
    ap.add_argument("--slots", type=int, default=512, help="continuous-batching slots (fit.batch_size)")
    ap.add_argument("--e2e-per-class", type=int, default=5000,
                    help="training images per class of the end-to-end dataset (0: skip part 2)")
    ap.add_argument("--shard-size", type=int, default=10000)
    ap.add_argument("--no-released-recipe", dest="released_recipe", action="store_false",
                    help="skip (d), the released recipe through izoo's engine (~9 min on 2 cores)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/izoo-fit-to-gate"))
    args = ap.parse_args()
    print(f"# fit_to_gate.py  {time.strftime('%Y-%m-%d %H:%M')}  {platform.machine()} {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}", flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    # its own images (seed 1), not those of part 2; the test split holds what part 1 fits
    probe = make_cifar10(args.workdir / "probe", seed=1, n_per_class=5,
                         n_test_per_class=max(args.n_batch, args.n_loop) // 10 + 1)
    loop_rate = part_compare(probe, args.n_loop, args.n_batch, args.slots, args.released_recipe)
    if args.e2e_per_class <= 0:
        return
    e2e = part_e2e(args.workdir, args.e2e_per_class, args.slots, args.shard_size)
    rate = e2e["items"] / e2e["wall"]
    print(f"end to end: {e2e['items']} items, {e2e['passed']} passed 30 dB, min PSNR {e2e['min_psnr']:.2f} dB, "
          f"mean steps {e2e['mean_steps']:.1f}, {rate:.1f} items/s; released loop {loop_rate:.2f} items/s")
    print(f"SUMMARY fit-to-gate items={e2e['items']} wall_min={e2e['wall'] / 60:.1f} items_per_s={rate:.1f} "
          f"min_psnr={e2e['min_psnr']:.2f} speedup_vs_released_loop={rate / loop_rate:.0f}")


if __name__ == "__main__":
    main()
