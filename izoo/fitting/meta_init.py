"""``izoo meta-init``: meta-learn one shared SIREN initialisation per dataset from a subset of its train split.

Algorithm: Meta-SGD (Li et al., 2017; MAML with learned per-parameter inner learning rates, as functa and
Tancik et al. 2021 meta-learn SIREN inits). It learns the init ``θ`` and one SGD learning rate ``α`` per
parameter such that ``inner_steps`` steps ``φ ← φ − α ⊙ ∇L(φ)`` from ``θ`` fit an image well: each outer
step draws a meta-batch of ``meta_batch`` items, takes the inner steps from ``θ`` with
``izoo.siren.warm_start.sgd_steps`` (differentiable), and moves ``θ`` and ``log α`` by one Adam step
(``outer_lr``, ``inner_lr_lr``) on the meta-batch's loss after them. Every fit job from the init takes the
same ``inner_steps`` learned-lr steps first, then its usual Adam phase (``izoo.siren.engine.SirenBatchFit``).

Calibration: Adam's first steps move every weight by about the learning rate whatever the gradient, which can
undo what the learned-lr steps did (measured on a 4/256 SIREN at 64²: 25.6 dB after the 3 steps, 13 dB after
one Adam step at lr 1e-3). So meta-init ends by fitting ``calibration_items`` meta-training items to
``fit.gate_psnr`` from the learned init with each of ``adam_lr_factors`` × ``fit.lr`` and stores the factor
with the fewest mean steps (ties: the larger); every fit from the init runs its Adam phase at that factor.

Why not Reptile over the engine's Adam (what this command ran first): measured with
``benchmarks/learned_init.py`` (RESULTS.md), Reptile's init cut the mean steps to 30 dB on held-out CIFAR-like
crops only 1.87× (57.6 → 30.8), and the SIREN init fitted with a 4× higher Adam lr got further (18.4 steps):
Adam's first steps are sign-like, so where it starts matters little. Meta-SGD's inner loop is plain,
differentiable SGD with learned rates, which is where a learned init pays off.

Held-out splits are never read: items come only from ``meta_init.split`` (default ``train``; the config
check refuses ``val``/``test`` and any benchmark's test split). The subset is ``meta_init.items`` manifest
rows of that split drawn with ``meta_init.seed``; outer step ``t`` draws its meta-batch from a generator
seeded with ``(seed, t)``, so a resumed run draws exactly what an uninterrupted one does.

Resume: the work dir holds ``state.pt`` (init, log learning rates, the outer Adam state, step, seconds;
written atomically every ``checkpoint_every`` outer steps and on SIGTERM/SIGUSR1 or ``--runtime-minutes``,
then exit 75). A state made with other settings or items is ignored with a warning. Exit codes as
``izoo fit``: 0 done, 2 bad input, 75 stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from izoo.atomic import atomic_path
from izoo.config import HELD_OUT_SPLITS, DatasetConfig, FitConfig, dataset_config, filled_section
from izoo.errors import IzooError
from izoo.fitting import learned_init
from izoo.fitting.device import default_device
from izoo.fitting.phases import as_fit_config, phase_settings
from izoo.fitting.progress import emit
from izoo.fitting.stream import FitInterrupted, is_out_of_memory
from izoo.siren import engine
from izoo.siren import model as siren
from izoo.siren import warm_start
from izoo.siren.family import SirenFamily
from izoo.siren.warm_start import WarmStart

#: settings only the calibration after meta-learning reads (a change reuses the meta-learning state)
CALIBRATION_KEYS = ("adam_lr_factors", "calibration_items")


@dataclass(frozen=True)
class MetaInitSettings:
    """What ``izoo meta-init`` does: which items, how many outer/inner steps, the outer step sizes."""

    split: str
    items: int
    outer_steps: int
    inner_steps: int
    meta_batch: int
    outer_lr: float
    inner_lr: float
    inner_lr_lr: float
    adam_lr_factors: tuple[float, ...]
    calibration_items: int
    seed: int
    checkpoint_every: int

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> "MetaInitSettings":
        """The dataset's ``meta_init:`` section with the schema's defaults filled (a bad value is a one-line error)."""
        merged = filled_section("meta_init", section)
        if str(merged["split"]) in HELD_OUT_SPLITS:
            raise IzooError(f"meta_init.split is {merged['split']!r}, a held-out split", "config.yaml",
                            "meta-learn from the train split (held-out items must stay unseen)")
        return cls(**{**merged, **{k: float(merged[k]) for k in ("outer_lr", "inner_lr", "inner_lr_lr")},
                      "adam_lr_factors": tuple(float(f) for f in merged["adam_lr_factors"])})


def select_items(manifest: pd.DataFrame, settings: MetaInitSettings, manifest_path: Any = "manifest") -> pd.DataFrame:
    """``settings.items`` rows of ``settings.split`` drawn with ``settings.seed`` (all when fewer), in manifest order."""
    rows = manifest[manifest["split"].astype(str) == settings.split]
    if rows.empty:
        raise IzooError(f"meta_init.split {settings.split!r} has no items (splits: "
                        f"{sorted(manifest['split'].astype(str).unique())})", manifest_path,
                        "set meta_init.split to the dataset's train split")
    if len(rows) > settings.items:
        pick = np.random.default_rng(settings.seed).choice(len(rows), settings.items, replace=False)
        rows = rows.iloc[np.sort(pick)]
    return rows.sort_values("index").reset_index(drop=True)


def meta_batch_rows(n_items: int, settings: MetaInitSettings, step: int) -> np.ndarray:
    """Positions (into the subset) of outer step ``step``'s meta-batch: depends only on (seed, step)."""
    size = min(settings.meta_batch, n_items)
    return np.sort(np.random.default_rng([settings.seed, step]).choice(n_items, size, replace=False))


def run_fingerprint(dataset: str, dataset_cfg: DatasetConfig | Mapping[str, Any], settings: MetaInitSettings,
                    indices: Sequence[int]) -> str:
    """Hash of what determines the learned init (resume state made with anything else is not reused)."""
    cfg = dataset_config(dataset_cfg)
    model = {k: v for k, v in cfg.model.to_dict().items() if k != "init_file"}
    meta = {k: v for k, v in asdict(settings).items() if k not in CALIBRATION_KEYS}
    payload = {"dataset": dataset, "model": model, "seed": cfg.seed.to_dict(), "meta_init": meta,
               "index": [int(i) for i in indices]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class MetaResult:
    """The learned init and learning rates (per-item shapes, family order) and what they cost."""

    params: dict[str, np.ndarray]
    inner_lrs: dict[str, np.ndarray]
    inner_steps: int
    seconds: float
    inner_psnr: list[float]     # mean PSNR of each outer step's meta-batch after its inner steps

    def init_params(self, n: int) -> list[torch.Tensor]:
        """The learned init repeated for ``n`` items (``[n, *shape]``, family order), as the engine takes ``init``."""
        return [torch.from_numpy(p).unsqueeze(0).expand(n, *p.shape).contiguous() for p in self.params.values()]

    def warm_start(self, adam_lr_factor: float = 1.0) -> WarmStart:
        """The first steps of every fit from this init, its Adam phase at ``adam_lr_factor`` × the lr."""
        return WarmStart(lrs=[torch.from_numpy(a) for a in self.inner_lrs.values()], steps=self.inner_steps,
                         adam_lr_factor=adam_lr_factor)


def meta_sgd(images: torch.Tensor, family: SirenFamily, settings: MetaInitSettings, *, base_seed: int = 42,
             device: torch.device | str = "cpu", state_path: Path | None = None, fingerprint: str = "",
             should_stop: Callable[[], bool] | None = None, progress_every: float = 30.0) -> MetaResult:
    """Meta-SGD over ``images`` ``[M, 3, H, W]`` in [0, 1] from the SIREN init of ``base_seed``; resumable via ``state_path``.

    A stop request saves the state and raises ``FitInterrupted``.
    """
    device = torch.device(device)
    spec = family.spec
    theta = [p[0].to(device).clone().requires_grad_(True) for p in siren.init_params(spec, [base_seed])]
    log_lr = [torch.full_like(p, math.log(settings.inner_lr)).requires_grad_(True) for p in theta]
    optimizer = torch.optim.Adam([{"params": theta, "lr": settings.outer_lr},
                                  {"params": log_lr, "lr": settings.inner_lr_lr}])
    step, seconds, history = 0, 0.0, []
    state = _load_state(state_path, fingerprint)
    if state is not None:
        with torch.no_grad():
            for p, saved in zip(theta + log_lr, state["theta"] + state["log_lr"]):
                p.copy_(saved)
        optimizer.load_state_dict(state["optimizer"])
        step, seconds, history = int(state["step"]), float(state["seconds"]), list(state["history"])
        emit(f"meta-init resumed at outer step {step}/{settings.outer_steps} from {state_path}")
    height, width = images.shape[-2:]
    coords = siren.coordinate_grid(height, width, device=device).reshape(-1, 2)

    def save() -> None:
        if state_path is not None:
            with atomic_path(state_path) as tmp:
                torch.save({"fingerprint": fingerprint,
                            "state": {"theta": [p.detach().cpu() for p in theta],
                                      "log_lr": [p.detach().cpu() for p in log_lr],
                                      "optimizer": optimizer.state_dict(), "step": step, "seconds": seconds,
                                      "history": history}}, tmp)

    last_line = time.perf_counter()
    while step < settings.outer_steps:
        if should_stop is not None and should_stop():
            save()
            raise FitInterrupted(f"stop requested at outer step {step}")
        tick = time.perf_counter()
        batch = images[torch.as_tensor(meta_batch_rows(len(images), settings, step))].to(device)
        target = warm_start.targets(batch)
        try:
            phi = warm_start.sgd_steps([p.unsqueeze(0).expand(len(batch), *p.shape) for p in theta],
                                       [a.exp() for a in log_lr], target, coords, spec.w0, settings.inner_steps,
                                       create_graph=True)
            loss = warm_start.item_losses(phi, target, coords, spec.w0).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            raise IzooError(f"a meta-batch of {len(batch)} items does not fit in {device} memory", "config.yaml",
                            "lower meta_init.meta_batch or meta_init.inner_steps") from None
        optimizer.step()
        if not all(bool(torch.isfinite(p).all()) for p in theta + log_lr):
            raise IzooError(f"meta-learning diverged at outer step {step} (non-finite init)", "config.yaml",
                            "lower meta_init.outer_lr, meta_init.inner_lr or meta_init.inner_lr_lr")
        with torch.no_grad():
            history.append(float(warm_start.item_psnr(phi, batch, coords, spec.w0).mean()))
        step += 1
        seconds += time.perf_counter() - tick
        if step % settings.checkpoint_every == 0 or step == settings.outer_steps:
            save()   # the last one too: a stop during the calibration that follows never redoes meta-learning
        now = time.perf_counter()
        if now - last_line >= progress_every or step == settings.outer_steps or step == 1:
            last_line = now
            recent = history[-settings.checkpoint_every:]
            emit(f"meta-init outer step {step}/{settings.outer_steps}: meta-batch PSNR after "
                 f"{settings.inner_steps} learned-lr steps {np.mean(recent):.2f} dB (mean of the last {len(recent)}), "
                 f"{step / max(seconds, 1e-9):.2f} outer steps/s")
    names = family.param_names()
    return MetaResult(params={n: p.detach().cpu().numpy().astype(np.float32) for n, p in zip(names, theta)},
                      inner_lrs={n: a.detach().exp().cpu().numpy().astype(np.float32) for n, a in zip(names, log_lr)},
                      inner_steps=settings.inner_steps, seconds=seconds, inner_psnr=history)


def calibrate_adam_lr(images: torch.Tensor, family: SirenFamily, result: MetaResult, settings: MetaInitSettings,
                      fit_cfg: FitConfig | Mapping[str, Any],
                      device: torch.device | str = "cpu") -> tuple[WarmStart, dict[str, float]]:
    """The warm start with the factor of ``settings.adam_lr_factors`` whose Adam phase reaches ``fit.gate_psnr`` in the
    fewest mean steps from the learned init (learned-lr steps included), and every factor's mean steps."""
    fit = as_fit_config(fit_cfg)
    phase = replace(phase_settings(fit, "basic"), stop_on_pass=True, check_every=1, min_steps=0, keep_best=False,
                    checkpoint_every=0)
    items = images[: settings.calibration_items]
    init = result.init_params(len(items))
    mean_steps: dict[str, float] = {}
    for factor in settings.adam_lr_factors:
        res = engine.fit_images(items, family.spec, phase, init=init, device=device, use_compile=fit.compile,
                                warm=result.warm_start(factor))
        mean_steps[f"{factor:g}"] = float(res.iterations.mean())
    best = min(settings.adam_lr_factors, key=lambda f: (mean_steps[f"{f:g}"], -f))
    emit(f"meta-init calibration on {len(items)} meta-training items, mean steps to {fit.gate_psnr:g} dB by Adam lr "
         f"factor: {', '.join(f'{k}x: {v:.1f}' for k, v in mean_steps.items())}; using {best:g}x fit.lr")
    return result.warm_start(best), mean_steps


def _load_state(path: Path | None, fingerprint: str) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable state restarts meta-learning, never trusted
        emit(f"warning: meta-init state {path} is unreadable ({type(exc).__name__}); starting over")
        return None
    if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
        emit(f"warning: meta-init state {path} was made with other settings or items; starting over")
        return None
    return saved["state"]


def load_images(rows: pd.DataFrame, load_sample: Callable[[Mapping[str, Any]], Any], source: Any) -> torch.Tensor:
    """The subset's images stacked ``[M, 3, H, W]``; items of one size only (the engine fits one size at once)."""
    images = []
    for row in rows.to_dict("records"):
        image = getattr(load_sample(row), "image", None)
        if image is None:
            raise IzooError(f"item {row['item_id']} has no image", source, "meta-init learns SIREN inits of 2D images")
        images.append(torch.as_tensor(image, dtype=torch.float32))
    sizes = sorted({tuple(im.shape) for im in images})
    if len(sizes) > 1:
        raise IzooError(f"meta-init items have {len(sizes)} image sizes ({sizes[:3]}...)", source,
                        "resize the dataset's images to one size (source.size / crop) to meta-learn one init")
    return torch.stack(images)


def run_meta_init(dataset: str, dataset_cfg: DatasetConfig | Mapping[str, Any], manifest: pd.DataFrame, workdir: str | Path,
                  out: str | Path, *, load_sample: Callable[[Mapping[str, Any]], Any],
                  should_stop: Callable[[], bool] | None = None, device: torch.device | str | None = None,
                  manifest_path: Any = "manifest") -> Path:
    """Meta-learn the dataset's init and write it to ``out`` (resumable from ``workdir``)."""
    dataset_cfg = dataset_config(dataset_cfg)
    model_cfg = {k: v for k, v in dataset_cfg.model.to_dict().items() if k != "init_file"}
    if dataset_cfg.model.family != "siren":
        raise IzooError(f"meta-init learns SIREN inits; dataset {dataset!r} has family {dataset_cfg.model.family!r}",
                        "config.yaml", "use model.init: learned only with family: siren")
    model_cfg["init"] = "siren"
    fit_cfg = dataset_cfg.fit.to_dict()
    family = SirenFamily(model_cfg, fit_cfg)
    settings = MetaInitSettings.from_config(dataset_cfg.meta_init)
    rows = select_items(manifest, settings, manifest_path)
    base_seed = dataset_cfg.seed.value
    fp = run_fingerprint(dataset, dataset_cfg, settings, rows["index"].tolist())
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else default_device(fit_cfg)
    emit(f"meta-init {dataset}: {len(rows)} items of split {settings.split!r}, {settings.outer_steps} outer steps x "
         f"{settings.meta_batch} items x {settings.inner_steps} inner steps on {device}")
    images = load_images(rows, load_sample, manifest_path)
    result = meta_sgd(images, family, settings, base_seed=base_seed, device=device,
                      state_path=workdir / "state.pt", fingerprint=fp, should_stop=should_stop)
    tick = time.perf_counter()
    warm, calibration = calibrate_adam_lr(images, family, result, settings, dataset_cfg.fit, device)
    calibration_s = time.perf_counter() - tick
    attrs = {"dataset": dataset, "source": dataset_cfg.to_dict()["source"], "model_family": family.name,
             "architecture": family.architecture(), "meta_init": asdict(settings), "base_seed": base_seed,
             "seconds": result.seconds, "device": str(device), "algorithm": "meta_sgd",
             "final_inner_psnr": float(np.mean(result.inner_psnr[-settings.checkpoint_every:])),
             "calibration_mean_steps": calibration, "calibration_seconds": calibration_s}
    learned_init.write_init_file(out, result.params, rows["index"].tolist(), attrs, inner_lrs=result.inner_lrs,
                                 inner_steps=warm.steps, adam_lr_factor=warm.adam_lr_factor)
    emit(f"done: learned init of {dataset} in {result.seconds + calibration_s:.1f} s → {out}")
    return Path(out)


def cmd_meta_init(args: argparse.Namespace) -> int:
    """``izoo meta-init``: parse, run, exit 75 when stopped with the state saved."""
    from izoo.datasets.manifest import load_manifest
    from izoo.fitting.commands import dataset_config_arg, run_stoppable, sample_loader
    from izoo.fitting.shard import EXIT_INTERRUPTED

    cfg = dataset_config_arg(args.dataset_config)
    manifest = load_manifest(args.manifest)
    done = run_stoppable(args.runtime_minutes, args.workdir,
                         lambda stop: run_meta_init(args.dataset, cfg, manifest, args.workdir, args.out,
                                                    load_sample=sample_loader(cfg), should_stop=stop.should_stop,
                                                    manifest_path=args.manifest))
    return EXIT_INTERRUPTED if done is None else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``meta-init`` to the ``izoo`` command line."""
    from izoo.fitting.commands import add_job_arguments

    p = subparsers.add_parser("meta-init", help="meta-learn one shared SIREN init from a train subset (resumable)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_arguments(p, "the init file, checked by izoo fit")
    p.add_argument("--out", required=True, help="init file to write at the end (.h5)")
    p.set_defaults(func=cmd_meta_init)
