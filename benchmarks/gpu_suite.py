"""One prepared GPU run that measures every fitter (and, with ``--quick --device cpu``, a CI smoke test of it).

Parts, each time-boxed (``--part-seconds``) and printing as it goes; a part that fails prints its error and the
others still run:

1. ``cifar``    SIREN 3/64 on CIFAR-like 32×32 images, 1000 steps: the paper-style loop (one image at a time) vs
                izoo's batched engine eager and compiled for B = 1k … 16k (TF32 on, and off for the largest B):
                images/s, GFLOP/s against a large matmul timed in the same run, PSNR agreement with the loop;
2. ``gate``     fit to the gate (recipe ``gate``, continuous batching) of up to 60,000 CIFAR-like items;
3. ``large``    SIREN ImageNet 4/256 at 224² and Cityscapes 5/256 at 320×640: steps timed for a batch, items/s
                at 3000 steps = B / (3000 × timed seconds per step);
4. ``nerf``     NeRF 4/128, 2048 rays × 64 samples, B = 1, 4, 16 scenes: scene-steps/s, scenes/hour at 20k steps;
5. ``jax``      a JAX ``vmap`` SIREN fitter (the fit-a-nef approach; optax's Adam when installed, else the same
                update written out) on the same images, init and steps, side by side with izoo;
6. ``oom``      an oversize batch under a capped CUDA memory fraction must hit out-of-memory and be halved;
7. ``meta``     ``izoo meta-init``'s Meta-SGD (second-order autograd) on the device from 256 CIFAR-like images, then
                1024 other ones fitted to 30 dB from its init (warm start, calibrated Adam lr) and from the SIREN init:
                meta-learning seconds, mean steps and items/s of both.

Only torch, numpy, scikit-image (+ Pillow) and optionally JAX are needed: nothing here imports jsonschema,
kornia or snakemake. The last line is

    SUMMARY gpu device=… cifar_fits_per_s_1000=… cifar_gate_fits_per_s=… imagenet_fits_per_s=… nerf_scenes_per_h=… vs_jax=…

with ``n/a`` for what did not run. Never read a CPU run as a GPU number.

    python benchmarks/gpu_suite.py                       # on a GPU node (~5 min on one H100/H200)
    python benchmarks/gpu_suite.py --quick --device cpu  # seconds; what CI runs
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np
import torch

from _common import fit_one_at_a_time, matmul_gflops, sync, train_flops_per_pixel
from izoo.datasets.demo import cifar_like_images
from izoo.devices import resolve_device
from izoo.fitting.meta_init import MetaInitSettings, calibrate_adam_lr, meta_sgd
from izoo.fitting.stream import FitResult
from izoo.siren import engine
from izoo.siren.family import SirenFamily
from izoo.fitting.phases import phase_settings
from izoo.recipes import RECIPES
from izoo.siren import model as siren

CIFAR = siren.SirenSpec(depth=3, width=64, w0=30.0)


def say(text: str) -> None:
    """Print and flush (the run is read as it goes)."""
    print(text, flush=True)


class Suite:
    """Runs the parts, each inside its time box, and collects the SUMMARY figures."""

    def __init__(self, device: torch.device, quick: bool, part_seconds: float):
        self.device, self.quick, self.part_seconds = device, quick, part_seconds
        # quick runs compile only in part cifar (which times eager and compiled): CI stays lean
        self.compile = not quick
        self.figures: dict[str, str] = {}
        self.deadline = 0.0
        self._images: torch.Tensor | None = None

    def left(self) -> float:
        """Seconds left in the current part's box."""
        return self.deadline - time.perf_counter()

    def run(self, name: str, fn: Callable[[], None]) -> None:
        """Run one part; an exception is printed and the suite goes on."""
        say(f"\n== part {name} (box {self.part_seconds:.0f} s) ==")
        self.deadline = time.perf_counter() + self.part_seconds
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a broken part must not stop the others
            say(f"PART {name} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            traceback.print_exc(limit=3, file=sys.stdout)
        say(f"-- part {name}: {time.perf_counter() - t0:.1f} s")

    def cifar_images(self, n: int) -> torch.Tensor:
        """``n`` CIFAR-like images: up to 2048 distinct crops, repeated to fill larger batches."""
        unique = min(n, 64 if self.quick else 2048)
        if self._images is None or len(self._images) < unique:
            pix, _ = cifar_like_images(unique, seed=0)
            self._images = torch.from_numpy(pix).permute(0, 3, 1, 2).float().div(255.0).contiguous()
        reps = math.ceil(n / unique)
        return self._images[:unique].repeat(reps, 1, 1, 1)[:n].contiguous()

    def timed_fit(self, images: torch.Tensor, spec: siren.SirenSpec, settings: Any, use_compile: bool,
                  **kwargs: Any) -> tuple[FitResult, float]:
        """``engine.fit_images`` after a 2-step warm-up of the same spec (compiles it), and its seconds."""
        engine.fit_images(images[:4], spec, phase_settings({"iterations": 2}, "basic"), seeds=[42] * 4,
                          device=self.device, use_compile=use_compile)
        sync(self.device)
        t0 = time.perf_counter()
        res = engine.fit_images(images, spec, settings, device=self.device, use_compile=use_compile, **kwargs)
        sync(self.device)
        return res, time.perf_counter() - t0

    # ----- parts
    def part_cifar(self) -> None:
        steps = 10 if self.quick else 1000
        sizes = [8] if self.quick else [1024, 4096, 16384]
        n_loop = 2 if self.quick else 4
        flops_item_step = train_flops_per_pixel(CIFAR) * 32 * 32
        ref = matmul_gflops(self.device)
        say(f"fp32 matmul reference: {ref:.0f} GFLOP/s (TF32 {'on' if self.device.type == 'cuda' else 'n/a'})")
        images = self.cifar_images(max(sizes))
        loop_s, loop_psnr = fit_one_at_a_time(images[:n_loop], CIFAR, steps, self.device)
        say(f"loop (one image at a time): {n_loop / loop_s:.2f} images/s, PSNR {loop_psnr.mean():.2f} dB")
        settings = phase_settings({"iterations": steps}, "basic")
        best = 0.0
        runs = [(sizes[0], False, True)] + [(b, True, True) for b in sizes] + [(sizes[-1], True, False)]
        if self.quick:   # eager only: the compiled step has its own tests, and a compile costs CI ~20 s
            runs = runs[:1]
        last_rate = None
        for batch, use_compile, tf32 in runs:
            if last_rate and batch / last_rate > self.left():
                say(f"B={batch}: skipped (would take ~{batch / last_rate:.0f} s, {self.left():.0f} s left in the box)")
                continue
            if self.device.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = tf32
            res, secs = self.timed_fit(images[:batch], CIFAR, settings, use_compile, seeds=[42] * batch)
            rate = batch / secs
            last_rate = rate
            gflops = batch * steps * flops_item_step / secs / 1e9
            agree = float(np.abs(res.psnr[:n_loop] - loop_psnr).max())
            say(f"B={batch:>6} {'compiled' if use_compile else 'eager   '} TF32 {'on ' if tf32 else 'off'}: "
                f"{rate:9.1f} images/s ({rate * loop_s / n_loop:7.1f}x the loop), {gflops:8.0f} GFLOP/s "
                f"({gflops / ref:.0%} of matmul), mean PSNR {res.psnr.mean():.2f} dB, |ΔPSNR| vs loop {agree:.3f} dB")
            if (use_compile and tf32) or self.quick:
                best = max(best, rate)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
        self.figures["cifar_fits_per_s_1000"] = f"{best:.1f}" if not self.quick else f"{best:.1f}(quick)"

    def part_gate(self) -> None:
        n, slots, gate = (12, 4, 20.0) if self.quick else (60000, 16384, 30.0)
        images = self.cifar_images(n)
        spec = siren.SirenSpec(depth=3, width=64, w0=30.0, init=RECIPES["gate"]["model"]["init"])
        settings = phase_settings({**RECIPES["gate"]["fit"], "iterations": 1000, "gate_psnr": gate}, "basic")
        res, secs = self.timed_fit(images, spec, settings, self.compile, seeds=[42] * n, slots=slots)
        say(f"{n} items to the {gate:g} dB gate through {slots} slots: {secs:.1f} s, {n / secs:.1f} items/s, "
            f"steps mean {res.iterations.mean():.1f} p90 {np.percentile(res.iterations, 90):.0f}, "
            f"min PSNR {res.psnr.min():.2f} dB, {int(res.passed.sum())}/{n} passed")
        self.figures["cifar_gate_fits_per_s"] = f"{n / secs:.1f}" + ("(quick)" if self.quick else "")

    def _large(self, label: str, spec: siren.SirenSpec, height: int, width: int, batch: int, timed: int) -> float:
        from skimage import data
        from skimage.transform import resize

        photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
        imgs = [resize(p[..., :3], (height, width), anti_aliasing=True) for p in photos]
        images = torch.from_numpy(np.stack([imgs[k % len(imgs)] for k in range(batch)])).permute(0, 3, 1, 2).float()
        settings = phase_settings({"iterations": 3000}, "basic")
        fitter = engine.SirenBatchFit(spec, images.contiguous(), settings, siren.init_params(spec, [42] * batch),
                                      device=self.device, use_compile=self.compile)
        fitter.advance(2)   # compile + warm-up
        sync(self.device)
        t0 = time.perf_counter()
        done = 0
        while done < timed and (done < 2 or self.left() > 0):
            fitter.advance(1)
            done += 1
        sync(self.device)
        per_step = (time.perf_counter() - t0) / done
        rate = batch / (3000 * per_step)
        say(f"{label}: B={batch}, {done} timed steps, {per_step * 1e3:.1f} ms/step → {rate:.3f} items/s at 3000 steps")
        return rate

    def part_large(self) -> None:
        if self.quick:
            rate = self._large("ImageNet-shaped (quick: 4/32 at 24²)", siren.SirenSpec(depth=4, width=32), 24, 24, 2, 2)
            self._large("Cityscapes-shaped (quick: 5/32 at 16×32)", siren.SirenSpec(depth=5, width=32), 16, 32, 2, 2)
            self.figures["imagenet_fits_per_s"] = f"{rate:.3f}(quick)"
            return
        rate = self._large("ImageNet 4/256 at 224²", siren.SirenSpec(depth=4, width=256), 224, 224, 64, 30)
        self.figures["imagenet_fits_per_s"] = f"{rate:.3f}"
        self._large("Cityscapes 5/256 at 320×640", siren.SirenSpec(depth=5, width=256), 320, 640, 16, 20)

    def part_nerf(self) -> None:
        from izoo.nerf.fitting import NerfBatchFit, RenderSettings
        from izoo.nerf.model import NerfSpec, init_params
        from izoo.nerf.synthetic import procedural_scene

        spec = NerfSpec(depth=2, width=16, pos_freqs=3, dir_freqs=2) if self.quick else NerfSpec()
        render = RenderSettings(rays_per_batch=64 if self.quick else 2048, samples_per_ray=8 if self.quick else 64)
        sizes, steps = ([1, 2], 2) if self.quick else ([1, 4, 16], 20)
        best = 0.0
        for batch in sizes:
            if self.left() <= 0:
                say(f"B={batch}: skipped (time box spent)")
                continue
            scenes = [procedural_scene(size=16 if self.quick else 64, n_train=4, n_test=1,
                                       centre=(0.1 * k, 0.0, 0.0)) for k in range(batch)]
            fitter = NerfBatchFit(spec, scenes, phase_settings({"iterations": 20000}, "basic"), render,
                                  init_params(spec, [42] * batch), device=self.device)
            fitter.advance(2)
            sync(self.device)
            t0 = time.perf_counter()
            fitter.advance(steps)
            sync(self.device)
            per_step = (time.perf_counter() - t0) / steps
            per_hour = 3600 * batch / (20000 * per_step)
            best = max(best, per_hour)
            say(f"NeRF B={batch:>2}: {batch / per_step:.1f} scene-steps/s → {per_hour:.1f} scenes/hour at 20k steps "
                f"({per_hour / 3.5:.1f}x the paper's 3.5)")
        self.figures["nerf_scenes_per_h"] = f"{best:.1f}" + ("(quick)" if self.quick else "")

    def part_jax(self) -> None:
        try:
            import jax
            import jax.numpy as jnp
        except ImportError:
            say("skipped: JAX is not installed here")
            return
        steps = 20 if self.quick else 1000
        batch = 8 if self.quick else 4096
        images = self.cifar_images(batch)
        init = siren.init_params(CIFAR, [42] * batch)
        settings = phase_settings({"iterations": steps}, "basic")
        lrs = np.array([settings.lr_at(s) for s in range(steps)], dtype=np.float32)
        coords = siren.coordinate_grid(32, 32).numpy()
        target = siren.normalise(images).reshape(batch, 3, -1).transpose(1, 2).numpy()
        w0 = CIFAR.w0

        def forward(params: list, xy: Any) -> Any:
            h = xy
            for k in range(CIFAR.depth - 1):
                h = jnp.sin(w0 * (h @ params[2 * k].T + params[2 * k + 1]))
            return h @ params[-2].T + params[-1]

        def loss(params: list, tgt: Any) -> Any:
            return jnp.mean((forward(params, coords) - tgt) ** 2)

        grad = jax.vmap(jax.grad(loss))
        try:
            import optax
            tx = optax.adam(learning_rate=lambda count: jnp.asarray(lrs)[count])
            kind = "optax.adam"

            def fit(params: list, tgts: Any) -> Any:
                state = jax.vmap(tx.init)(params)

                def body(carry: Any, _: Any) -> Any:
                    p, s = carry
                    updates, s = jax.vmap(tx.update)(grad(p, tgts), s, p)
                    return (optax.apply_updates(p, updates), s), None
                return jax.lax.scan(body, (params, state), None, length=steps)[0][0]
        except ImportError:
            kind = "Adam written out (optax not installed)"

            def fit(params: list, tgts: Any) -> Any:
                zeros = [jnp.zeros_like(p) for p in params]

                def body(carry: Any, t: Any) -> Any:
                    p, m, v = carry
                    g = grad(p, tgts)
                    m = [0.9 * a + 0.1 * b for a, b in zip(m, g)]
                    v = [0.999 * a + 0.001 * b * b for a, b in zip(v, g)]
                    lr = jnp.asarray(lrs)[t] / (1 - 0.9 ** (t + 1.0))
                    c2 = jnp.sqrt(1 - 0.999 ** (t + 1.0))
                    p = [a - lr * mm / (jnp.sqrt(vv) / c2 + 1e-8) for a, mm, vv in zip(p, m, v)]
                    return (p, m, v), None
                return jax.lax.scan(body, (params, zeros, zeros), jnp.arange(steps))[0][0]

        fit = jax.jit(fit)
        params = [jnp.asarray(p.numpy()) for p in init]
        tgts = jnp.asarray(target)
        jax.block_until_ready(fit(params, tgts))        # compile
        t0 = time.perf_counter()
        out = jax.block_until_ready(fit(params, tgts))
        jax_s = time.perf_counter() - t0
        pred = np.asarray(jax.vmap(lambda p: forward(p, coords))(out))
        pred01 = np.clip(pred * np.array(siren.IMAGENET_STD) + np.array(siren.IMAGENET_MEAN), 0, 1)
        truth = images.reshape(batch, 3, -1).transpose(1, 2).numpy()
        jax_psnr = -10 * np.log10(((pred01 - truth) ** 2).mean(axis=(1, 2)))
        res, izoo_s = self.timed_fit(images, CIFAR, settings, self.compile, init=init)
        say(f"JAX vmap ({kind}, {jax.devices()[0].platform}): {batch / jax_s:.1f} images/s, mean PSNR "
            f"{jax_psnr.mean():.2f} dB; izoo: {batch / izoo_s:.1f} images/s, mean PSNR {res.psnr.mean():.2f} dB; "
            f"izoo/JAX = {jax_s / izoo_s:.2f}x")
        self.figures["vs_jax"] = f"{jax_s / izoo_s:.2f}" + ("(quick)" if self.quick else "")

    def part_oom(self) -> None:
        if self.device.type != "cuda":
            say("skipped: a CPU has no device-memory limit to hit")
            return
        free, total = torch.cuda.mem_get_info(self.device)
        batch = 8192
        # room for about a quarter of the batch's activations: the first attempt must fail, a halving fit
        per_item = CIFAR.width * 32 * 32 * 4 * 8
        fraction = min(0.9, (torch.cuda.memory_allocated(self.device) + per_item * batch / 4) / total)
        torch.cuda.set_per_process_memory_fraction(fraction, self.device)
        try:
            family = SirenFamily({"depth": 3, "width": 64}, {"compile": "off"})
            images = self.cifar_images(batch)
            samples = [type("S", (), {"image": img, "label_map": None, "item_id": str(k)})()
                       for k, img in enumerate(images)]
            res = family.fit_batch(samples, None, [42] * batch, phase_settings({"iterations": 5}, "basic"),
                                   self.device, slots=batch)
            say(f"fitted {len(res.psnr)} items under a {fraction:.3f} memory fraction (halving lines above, on stderr)")
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)
            torch.cuda.empty_cache()

    def part_meta(self) -> None:
        meta_items, held_items = (16, 8) if self.quick else (256, 1024)
        images = self.cifar_images(meta_items + held_items)
        train, held = images[:meta_items], images[meta_items:]
        family = SirenFamily({"depth": 3, "width": 64}, {"compile": "off"})
        settings = MetaInitSettings.from_config({"items": meta_items, "outer_steps": 5 if self.quick else 600,
                                                 "calibration_items": 4 if self.quick else 16})
        sync(self.device)
        t0 = time.perf_counter()
        res = meta_sgd(train, family, settings, device=self.device, progress_every=30.0)
        warm, _ = calibrate_adam_lr(train, family, res, settings, {"compile": "off"}, self.device)
        sync(self.device)
        meta_s = time.perf_counter() - t0
        say(f"Meta-SGD: {settings.outer_steps} outer steps x {settings.meta_batch} items x {settings.inner_steps} "
            f"learned-lr steps + calibration ({warm.adam_lr_factor:g}x fit.lr kept) in {meta_s:.1f} s")
        gate = dataclasses.replace(phase_settings({"iterations": 1000}, "basic"), stop_on_pass=True, check_every=1,
                                   gate_psnr=30.0)
        learned = res.init_params(len(held))
        runs = {}
        for name, kwargs in (("SIREN init", {"seeds": [42] * len(held)}), ("learned init", {"init": learned, "warm": warm})):
            out, secs = self.timed_fit(held, CIFAR, gate, self.compile, **kwargs)
            runs[name] = float(out.iterations.mean())
            say(f"{name}: {len(held)} items to 30 dB, mean steps {out.iterations.mean():.1f}, {len(held) / secs:.1f} "
                f"items/s, {int((~out.passed).sum())} not there in 1000 steps")
        say(f"mean steps ratio SIREN/learned = {runs['SIREN init'] / max(runs['learned init'], 1e-9):.2f}x")


def main() -> None:
    """Run every part and print the SUMMARY line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of every part (CI)")
    ap.add_argument("--part-seconds", type=float, default=None, help="time box of each part (default 55, quick 60)")
    ap.add_argument("--parts", nargs="+", default=["cifar", "gate", "large", "nerf", "jax", "oom", "meta"])
    args = ap.parse_args()
    device = resolve_device(args.device, tf32=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{platform.machine()}"
    say(f"# gpu_suite.py {time.strftime('%Y-%m-%d %H:%M')} device={name} torch {torch.__version__} "
        f"threads {torch.get_num_threads()} quick={args.quick}")
    suite = Suite(device, args.quick, args.part_seconds or (60.0 if args.quick else 55.0))
    for part in args.parts:
        suite.run(part, getattr(suite, f"part_{part}"))
    keys = ("cifar_fits_per_s_1000", "cifar_gate_fits_per_s", "imagenet_fits_per_s", "nerf_scenes_per_h", "vs_jax")
    say("SUMMARY gpu device=" + name.replace(" ", "_") + " " + " ".join(f"{k}={suite.figures.get(k, 'n/a')}"
                                                                      for k in keys))


if __name__ == "__main__":
    main()
