"""Learned shared init vs the SIREN init: steps and seconds to 30 / 35 dB on held-out images, meta-learning cost,
final PSNR distribution, and the demo classification benchmark on archives fitted from both inits.

Data (nothing downloaded): CIFAR-like images are object-sized crops (40-100 % of the short side) of the photos
bundled with scikit-image, downsampled with anti-aliasing to 32×32; meta-training and held-out crops come from
disjoint photos (``META_PHOTOS`` / ``HELD_OUT_PHOTOS``). The larger case uses 64×64 crops of the same photos with
the ImageNet SIREN (4 layers, width 256). Meta-learning is ``izoo.fitting.meta_init.meta_sgd`` (what
``izoo meta-init`` runs); steps to X dB use the dataset's basic-phase schedule with ``stop_on_pass``,
``check_every=1`` and ``gate_psnr=X``, so an item's ``iterations`` is its step count to X dB (``--max-steps``
when it never gets there; such items are counted and reported). From the learned init the count includes
the init's learned-lr SGD steps, which every fit from it takes first (each one forward and backward pass,
like an Adam step), and its Adam steps run at the calibrated multiple of the lr (``calibrate_adam_lr``, on
meta-training items; its cost is counted in the meta-learning seconds). A third row fits from the SIREN init
with a ``--siren-lr-factor`` times higher Adam lr: not the recipe, a reference for how much of the gain a
higher learning rate alone would give. The classification part runs the pipeline's own code: ``izoo demo-data`` CIFAR set → manifest → ``run_meta_init`` on its train split → ``fit_shard`` for
train and test from each init (fixed ``--cls-iterations`` budget) → ``run_classification``.

    OMP_NUM_THREADS=1 python benchmarks/learned_init.py

Last line: ``SUMMARY learned-init steps_ratio_30db=… steps_ratio_35db=… meta_s=…`` (CIFAR-like, held-out mean
steps SIREN init / learned init; meta_s = CIFAR-like meta-learning seconds). Not a test: timings depend on
the machine and its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from izoo.siren import engine
from izoo.siren.family import SirenFamily
from izoo.fitting.meta_init import MetaInitSettings, calibrate_adam_lr, meta_sgd
from izoo.fitting.phases import phase_settings
from izoo.siren import model as siren
from izoo.siren.warm_start import WarmStart

#: meta-training photos and held-out photos: disjoint sources, so held-out items are unseen scenes
META_PHOTOS = ("astronaut", "coffee", "rocket", "retina", "immunohistochemistry", "camera", "moon", "gravel")
HELD_OUT_PHOTOS = ("chelsea", "motorcycle", "hubble_deep_field", "coins", "grass")
CIFAR_FIT = {"iterations": 1000, "lr": 1.0e-3, "lr_min": 1.0e-5, "compile": "off"}   # config.yaml's cifar10 fit


def _photo(name: str) -> np.ndarray:
    import skimage.data

    image = {"motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
             "retina": lambda: skimage.data.retina()[250:1160, 250:1160]}.get(name, getattr(skimage.data, name, None))()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image[..., :3].astype(np.uint8)


def photo_crops(names: tuple[str, ...], n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` crops ``[n, 3, size, size]`` in [0, 1], round-robin over the photos, 40-100 % of the short side."""
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(_photo(name)) for name in names]
    out = []
    for k in range(n):
        photo = photos[k % len(photos)]
        width, height = photo.size
        side = int(min(width, height) * rng.uniform(0.4, 1.0))
        left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out).contiguous()


def broadcast(params: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    return [p.unsqueeze(0).expand(n, *p.shape).contiguous() for p in params]


def steps_to(images: torch.Tensor, spec: siren.SirenSpec, init: list[torch.Tensor], gate: float,
             max_steps: int, warm: WarmStart | None = None, lr_factor: float = 1.0) -> tuple[np.ndarray, float, np.ndarray]:
    """Per-item steps to ``gate`` dB (``max_steps`` if never), wall seconds of the batch, and reached flags."""
    fit = {**CIFAR_FIT, "lr": CIFAR_FIT["lr"] * lr_factor, "lr_min": CIFAR_FIT["lr_min"] * lr_factor}
    settings = dataclasses.replace(phase_settings(fit, "basic"), stop_on_pass=True, check_every=1,
                                   gate_psnr=gate, keep_best=False, max_steps=max_steps)
    tick = time.perf_counter()
    res = engine.fit_images(images, spec, settings, init=broadcast(init, len(images)), use_compile=False, warm=warm)
    return res.iterations.astype(np.int64), time.perf_counter() - tick, res.passed


def final_psnr(images: torch.Tensor, spec: siren.SirenSpec, init: list[torch.Tensor], iterations: int,
               warm: WarmStart | None = None) -> tuple[np.ndarray, float]:
    """PSNR after the basic phase's fixed budget (cosine schedule over ``iterations``) and the fit's wall seconds."""
    settings = phase_settings({**CIFAR_FIT, "iterations": iterations, "check_every": iterations}, "basic")
    tick = time.perf_counter()
    psnr = engine.fit_images(images, spec, settings, init=broadcast(init, len(images)), use_compile=False,
                             warm=warm).psnr
    return psnr, time.perf_counter() - tick


def meta_learn(images: torch.Tensor, spec: siren.SirenSpec, settings: MetaInitSettings) -> tuple[list[torch.Tensor], WarmStart, float]:
    """The learned init, its warm start (learned lrs, calibrated Adam lr factor) and the seconds of both, as
    ``izoo meta-init`` makes them."""
    family = SirenFamily({"family": "siren", **{k: getattr(spec, k) for k in ("depth", "width", "w0")}}, CIFAR_FIT)
    res = meta_sgd(images, family, settings, progress_every=60.0)
    tick = time.perf_counter()
    warm, _ = calibrate_adam_lr(images, family, res, settings, CIFAR_FIT)
    return [p[0] for p in res.init_params(1)], warm, res.seconds + time.perf_counter() - tick


def compare(label: str, held: torch.Tensor, spec: siren.SirenSpec, learned: list[torch.Tensor], warm: WarmStart,
            gates: list[float], max_steps: int, lr_factor: float) -> dict[str, dict[str, float]]:
    """Steps and seconds to each gate from both inits (and the SIREN init at ``lr_factor`` × the lr); one line each."""
    base = [p[0] for p in siren.init_params(spec, [42])]
    out: dict[str, dict[str, float]] = {}
    runs = (("siren", base, None, 1.0), ("learned", learned, warm, 1.0), (f"siren-lr{lr_factor:g}x", base, None, lr_factor))
    for gate in gates:
        row: dict[str, float] = {}
        for name, init, warm_start, factor in runs:
            steps, seconds, reached = steps_to(held, spec, init, gate, max_steps, warm_start, factor)
            row[f"{name}_mean"], row[f"{name}_median"] = float(steps.mean()), float(np.median(steps))
            row[f"{name}_s"], row[f"{name}_missed"] = seconds, int((~reached).sum())
            print(f"{label} {gate:g} dB from {name:11s} init: steps mean {steps.mean():7.1f} median {np.median(steps):6.1f} "
                  f"p90 {np.percentile(steps, 90):6.1f}, {seconds:6.1f} s for {len(held)} items, "
                  f"{int((~reached).sum())} not there in {max_steps} steps", flush=True)
        row["ratio"] = row["siren_mean"] / max(row["learned_mean"], 1e-9)
        higher_lr = row[f"siren-lr{lr_factor:g}x_mean"]
        print(f"{label} {gate:g} dB: mean steps ratio SIREN/learned = {row['ratio']:.2f}x, "
              f"seconds ratio = {row['siren_s'] / max(row['learned_s'], 1e-9):.2f}x; SIREN init at {lr_factor:g}x lr / "
              f"learned = {higher_lr / max(row['learned_mean'], 1e-9):.2f}x", flush=True)
        out[f"{gate:g}"] = row
    return out


def describe(psnr: np.ndarray) -> str:
    return (f"mean {psnr.mean():.2f} p10 {np.percentile(psnr, 10):.2f} median {np.median(psnr):.2f} "
            f"p90 {np.percentile(psnr, 90):.2f} min {psnr.min():.2f} dB, >=30 dB {np.mean(psnr >= 30) * 100:.0f} %")


def classification(args: argparse.Namespace, meta: MetaInitSettings) -> dict[str, float]:
    """Demo CIFAR set: meta-init on its train split, archives from both inits, the demo classifier on each."""
    from izoo.benchmarks.classification.settings import ClassificationSettings
    from izoo.benchmarks.classification.train import run_classification
    from izoo.datasets import open_source
    from izoo.datasets.demo import make_demo_data
    from izoo.datasets.manifest import build_manifest, load_manifest
    from izoo.fitting.meta_init import run_meta_init
    from izoo.fitting.shard import fit_shard

    root = Path(tempfile.mkdtemp(prefix="izoo-learned-init-"))
    make_demo_data(root / "data", seed=0, kinds=["cifar10"], n_per_class=args.cls_per_class)
    source = {"format": "cifar10", "root": str(root / "data/cifar-10-batches-py"), "splits": ["train", "test"]}
    build_manifest("demo_cifar10", source, 10_000, root / "results")
    manifest = load_manifest(root / "results/manifest.csv")
    loader = open_source(source).load
    fit = {**CIFAR_FIT, "iterations": args.cls_iterations, "batch_size": 512, "check_every": args.cls_iterations,
           "checkpoint_every": 10_000, "device": "cpu"}
    base_cfg = {"source": source, "seed": {"mode": "shared", "value": 42}, "fit": fit,
                "meta_init": dataclasses.asdict(meta)}
    tick = time.perf_counter()
    init_file = run_meta_init("demo_cifar10", {**base_cfg, "model": {"family": "siren", "depth": 3, "width": 64}},
                              manifest, root / "work/meta_init", root / "init.h5", load_sample=loader)
    print(f"classification: meta-init on the demo train split ({meta.items} items) took "
          f"{time.perf_counter() - tick:.1f} s", flush=True)
    settings = ClassificationSettings.from_json({"model": "vit_tiny", "model_kwargs": {"depth": 2, "embed_dim": 64,
                                                 "num_heads": 2}, "patch": 4, "epochs": args.cls_epochs,
                                                 "batch_size": 64, "lr": 1.0e-3})
    result = {}
    for name, model in (("siren", {"init": "siren"}), ("learned", {"init": "learned", "init_file": str(init_file)})):
        cfg = {**base_cfg, "model": {"family": "siren", "depth": 3, "width": 64, "w0": 30.0, **model}}
        paths = {}
        for split in ("train", "test"):
            items = manifest[manifest["split"] == split].reset_index(drop=True)
            tick = time.perf_counter()
            out = fit_shard(items, loader, cfg, root / f"work/{name}/{split}", "basic", dataset="demo_cifar10")
            paths[split] = root / f"{name}-{split}.h5"
            out.write(paths[split], root / f"{name}-{split}.csv")
            print(f"classification: {split} ({len(items)} items, {args.cls_iterations} steps) from {name} init in "
                  f"{time.perf_counter() - tick:.1f} s, PSNR {describe(out.report['psnr_after'].to_numpy())}", flush=True)
        accuracies = [run_classification(paths["train"], paths["test"], args.cls_tokenizer, seed, settings,
                                         device="cpu")["accuracy"] for seed in args.cls_seeds]
        result[name] = float(np.mean(accuracies))
        print(f"classification ({args.cls_tokenizer}, seeds {args.cls_seeds}) on archives from {name} init: "
              f"accuracy {result[name] * 100:.1f} % (runs: {[round(a * 100, 1) for a in accuracies]})", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meta-items", type=int, default=256)
    parser.add_argument("--outer-steps", type=int, default=600)
    parser.add_argument("--inner-steps", type=int, default=3)
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--outer-lr", type=float, default=1.0e-3)
    parser.add_argument("--inner-lr", type=float, default=0.1)
    parser.add_argument("--inner-lr-lr", type=float, default=1.0e-2)
    parser.add_argument("--siren-lr-factor", type=float, default=4.0,
                        help="the reference row: SIREN init fitted with this many times the recipe's Adam lr")
    parser.add_argument("--held-out", type=int, default=32)
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--final-iterations", type=int, default=300, help="basic budget of the final-PSNR fits")
    parser.add_argument("--large-size", type=int, default=64)
    parser.add_argument("--large-meta-items", type=int, default=32)
    parser.add_argument("--large-outer-steps", type=int, default=150)
    parser.add_argument("--large-inner-steps", type=int, default=3)
    parser.add_argument("--large-inner-lr", type=float, default=3.0e-3)
    parser.add_argument("--large-meta-batch", type=int, default=4)
    parser.add_argument("--large-held-out", type=int, default=4)
    parser.add_argument("--large-max-steps", type=int, default=400)
    parser.add_argument("--cls-per-class", type=int, default=20, help="demo CIFAR train items per class")
    parser.add_argument("--cls-iterations", type=int, default=60)
    parser.add_argument("--cls-epochs", type=int, default=15)
    parser.add_argument("--cls-tokenizer", default="lc")
    parser.add_argument("--cls-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-classification", action="store_true")
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); settings {json.dumps(vars(args))}", flush=True)

    def meta_settings(items: int, outer_steps: int, inner_steps: int, meta_batch: int, inner_lr: float) -> MetaInitSettings:
        return MetaInitSettings.from_config({"items": items, "outer_steps": outer_steps, "inner_steps": inner_steps,
                                             "meta_batch": meta_batch, "outer_lr": args.outer_lr,
                                             "inner_lr": inner_lr, "inner_lr_lr": args.inner_lr_lr})

    meta = meta_settings(args.meta_items, args.outer_steps, args.inner_steps, args.meta_batch, args.inner_lr)
    spec = siren.SirenSpec(depth=3, width=64)
    train = photo_crops(META_PHOTOS, args.meta_items, 32, seed=0)
    held = photo_crops(HELD_OUT_PHOTOS, args.held_out, 32, seed=1)
    learned, warm, meta_s = meta_learn(train, spec, meta)
    print(f"cifar-like: meta-learned a 3/64 init from {args.meta_items} crops of {len(META_PHOTOS)} photos in "
          f"{meta_s:.1f} s ({args.outer_steps} outer x {args.meta_batch} items x {args.inner_steps} learned-lr steps = "
          f"{args.outer_steps * args.meta_batch * args.inner_steps} item-steps, second order)", flush=True)
    cifar = compare("cifar-like", held, spec, learned, warm, [30.0, 35.0], args.max_steps, args.siren_lr_factor)

    base = [p[0] for p in siren.init_params(spec, [42])]
    rate = 0.0
    for name, init, warm_start in (("siren", base, None), ("learned", learned, warm)):
        psnr, seconds = final_psnr(held, spec, init, args.final_iterations, warm_start)
        rate = rate or args.held_out * args.final_iterations / seconds
        print(f"cifar-like final PSNR after {args.final_iterations} steps from {name} init: {describe(psnr)}", flush=True)

    # meta-learning cost against fitting a CIFAR-10-sized dataset (60,000 items) at this run's fitting throughput
    to_gate_s = 60_000 * cifar["30"]["siren_mean"] / rate
    budget_s = 60_000 * CIFAR_FIT["iterations"] / rate
    print(f"cost: fitting 60,000 CIFAR items at {rate:.0f} item-steps/s (measured above, same engine) takes "
          f"~{to_gate_s:.0f} s to 30 dB from the SIREN init (~{budget_s:.0f} s for the 1000-step basic budget); "
          f"meta-learning took {meta_s:.1f} s = {100 * meta_s / to_gate_s:.2f} % / {100 * meta_s / budget_s:.3f} % of that",
          flush=True)

    if not args.skip_large:
        big = siren.SirenSpec(depth=4, width=256)
        big_meta = meta_settings(args.large_meta_items, args.large_outer_steps, args.large_inner_steps,
                                 args.large_meta_batch, args.large_inner_lr)
        big_train = photo_crops(META_PHOTOS, args.large_meta_items, args.large_size, seed=2)
        big_held = photo_crops(HELD_OUT_PHOTOS, args.large_held_out, args.large_size, seed=3)
        big_learned, big_warm, big_s = meta_learn(big_train, big, big_meta)
        print(f"large: meta-learned a 4/256 init from {args.large_meta_items} {args.large_size}² crops in {big_s:.1f} s "
              f"({args.large_outer_steps} outer x {args.large_meta_batch} items x {args.large_inner_steps} learned-lr steps)",
              flush=True)
        compare(f"large {args.large_size}² 4/256", big_held, big, big_learned, big_warm, [30.0], args.large_max_steps,
                args.siren_lr_factor)

    if not args.skip_classification:
        cls_meta = meta_settings(args.cls_per_class * 10, args.outer_steps, args.inner_steps, args.meta_batch,
                                 args.inner_lr)
        acc = classification(args, cls_meta)
        print(f"classification accuracy: siren init {acc['siren'] * 100:.1f} %, learned init {acc['learned'] * 100:.1f} %",
              flush=True)

    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    print(f"SUMMARY learned-init steps_ratio_30db={cifar['30']['ratio']:.2f} steps_ratio_35db={cifar['35']['ratio']:.2f} "
          f"meta_s={meta_s:.1f}", flush=True)


if __name__ == "__main__":
    main()
