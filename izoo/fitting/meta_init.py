"""``izoo meta-init``: meta-learn one shared SIREN initialisation per dataset from a subset of its train split.

Algorithm: Reptile (Nichol et al., 2018) over the batched engine. Each outer step draws a meta-batch of
``meta_batch`` items from the subset, fits all of them for ``inner_steps`` Adam steps from the current init
with ``izoo.siren.engine.fit_images`` (fresh Adam moments and the dataset's ``fit.lr``, as the fit jobs
start), and moves the init towards the mean of the fitted weights:
``θ ← θ + ε_t (mean_i φ_i − θ)`` with ``ε_t`` decaying linearly from ``outer_lr`` to 0.

Why Reptile and not MAML (Tancik et al. 2021 use both): the fit jobs optimise with Adam, whose first steps
are sign-like, so second-order MAML through Adam's inner loop has almost no gradient, and the engine's
hand-written backward is not differentiable anyway. Reptile only needs the inner loop's end points, so it
reuses the batched engine (every item of a meta-batch in one fused step) and its inner loop is exactly the
optimiser the fit jobs run.

Held-out splits are never read: items come only from ``meta_init.split`` (default ``train``; the config
check refuses ``val``/``test`` and any benchmark's test split). The subset is ``meta_init.items`` manifest
rows of that split drawn with ``meta_init.seed``; outer step ``t`` draws its meta-batch from a generator
seeded with ``(seed, t)``, so a resumed run draws exactly what an uninterrupted one does.

Resume: the work dir holds ``state.pt`` (init, step, seconds; written atomically every ``checkpoint_every``
outer steps and on SIGTERM/SIGUSR1 or ``--runtime-minutes``, then exit 75). A state made with other
settings or items is ignored with a warning. Exit codes as ``izoo fit``: 0 done, 2 bad input, 75 stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass
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
from izoo.fitting.phases import PhaseSettings, as_fit_config
from izoo.fitting.progress import emit
from izoo.fitting.stream import FitInterrupted, is_out_of_memory
from izoo.siren import engine
from izoo.siren import model as siren
from izoo.siren.family import SirenFamily

@dataclass(frozen=True)
class MetaInitSettings:
    """What ``izoo meta-init`` does: which items, how many outer/inner steps, the outer step size."""

    split: str
    items: int
    outer_steps: int
    inner_steps: int
    meta_batch: int
    outer_lr: float
    seed: int
    checkpoint_every: int

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> "MetaInitSettings":
        """The dataset's ``meta_init:`` section with the schema's defaults filled (a bad value is a one-line error)."""
        merged = filled_section("meta_init", section)
        if str(merged["split"]) in HELD_OUT_SPLITS:
            raise IzooError(f"meta_init.split is {merged['split']!r}, a held-out split", "config.yaml",
                            "meta-learn from the train split (held-out items must stay unseen)")
        return cls(**{**merged, "outer_lr": float(merged["outer_lr"])})

    def inner_phase(self, fit_cfg: FitConfig | Mapping[str, Any]) -> PhaseSettings:
        """The inner loop: ``inner_steps`` Adam steps at the fit's starting learning rate, no early stop."""
        lr = float(as_fit_config(fit_cfg).lr)
        return PhaseSettings(phase="basic", max_steps=self.inner_steps, schedule_steps=self.inner_steps, lr=lr,
                             lr_min=lr, gate_psnr=float("inf"), check_every=self.inner_steps, stop_on_pass=False,
                             patience=None, min_delta=0.0, keep_best=False, checkpoint_every=0)


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
    payload = {"dataset": dataset, "model": model, "seed": cfg.seed.to_dict(), "lr": cfg.fit.lr,
               "meta_init": asdict(settings), "index": [int(i) for i in indices]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class MetaResult:
    """The learned init (per-item shapes, family order) and what it cost."""

    params: dict[str, np.ndarray]
    seconds: float
    inner_psnr: list[float]     # mean PSNR of each outer step's meta-batch after its inner steps


def reptile(images: torch.Tensor, family: SirenFamily, settings: MetaInitSettings,
            fit_cfg: FitConfig | Mapping[str, Any], *,
            base_seed: int = 42, device: torch.device | str = "cpu", state_path: Path | None = None,
            fingerprint: str = "", should_stop: Callable[[], bool] | None = None,
            progress_every: float = 30.0) -> MetaResult:
    """Reptile over ``images`` ``[M, 3, H, W]`` in [0, 1] from the SIREN init of ``base_seed``; resumable via ``state_path``.

    A stop request saves the state and raises ``FitInterrupted``.
    """
    names = family.param_names()
    theta = [p[0].clone() for p in siren.init_params(family.spec, [base_seed])]
    step, seconds, history = 0, 0.0, []
    state = _load_state(state_path, fingerprint)
    if state is not None:
        theta, step, seconds, history = list(state["theta"]), int(state["step"]), float(state["seconds"]), list(state["history"])
        emit(f"meta-init resumed at outer step {step}/{settings.outer_steps} from {state_path}")
    inner = settings.inner_phase(fit_cfg)
    use_compile = as_fit_config(fit_cfg).compile

    def save() -> None:
        if state_path is not None:
            with atomic_path(state_path) as tmp:
                torch.save({"fingerprint": fingerprint, "state": {"theta": theta, "step": step, "seconds": seconds,
                                                                   "history": history}}, tmp)

    last_line = time.perf_counter()
    while step < settings.outer_steps:
        if should_stop is not None and should_stop():
            save()
            raise FitInterrupted(f"stop requested at outer step {step}")
        tick = time.perf_counter()
        rows = torch.as_tensor(meta_batch_rows(len(images), settings, step))
        batch = images[rows]
        try:
            res = engine.fit_images(batch, family.spec, inner,
                                    init=[p.unsqueeze(0).expand(len(rows), *p.shape).contiguous() for p in theta],
                                    device=device, use_compile=use_compile)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            raise IzooError(f"a meta-batch of {len(rows)} items does not fit in {device} memory", "config.yaml",
                            "lower meta_init.meta_batch") from None
        step_size = settings.outer_lr * (1.0 - step / settings.outer_steps)
        theta = [p + step_size * (fitted.to(p).mean(0) - p) for p, fitted in zip(theta, res.params)]
        if not all(bool(torch.isfinite(p).all()) for p in theta):
            raise IzooError(f"meta-learning diverged at outer step {step} (non-finite init)", "config.yaml",
                            "lower meta_init.outer_lr or the dataset's fit.lr")
        history.append(float(np.mean(res.psnr)))
        step += 1
        seconds += time.perf_counter() - tick
        if step % settings.checkpoint_every == 0 and step < settings.outer_steps:
            save()
        now = time.perf_counter()
        if now - last_line >= progress_every or step == settings.outer_steps or step == 1:
            last_line = now
            recent = history[-settings.checkpoint_every:]
            emit(f"meta-init outer step {step}/{settings.outer_steps}: meta-batch PSNR after "
                 f"{settings.inner_steps} inner steps {np.mean(recent):.2f} dB (mean of the last {len(recent)}), "
                 f"{step / max(seconds, 1e-9):.2f} outer steps/s")
    return MetaResult(params={n: p.numpy().astype(np.float32) for n, p in zip(names, theta)}, seconds=seconds,
                      inner_psnr=history)


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
    result = reptile(images, family, settings, dataset_cfg.fit, base_seed=base_seed, device=device,
                     state_path=workdir / "state.pt", fingerprint=fp, should_stop=should_stop)
    attrs = {"dataset": dataset, "source": dataset_cfg.to_dict()["source"], "model_family": family.name,
             "architecture": family.architecture(), "meta_init": asdict(settings), "base_seed": base_seed,
             "seconds": result.seconds, "device": str(device), "algorithm": "reptile",
             "final_inner_psnr": float(np.mean(result.inner_psnr[-settings.checkpoint_every:]))}
    learned_init.write_init_file(out, result.params, rows["index"].tolist(), attrs)
    emit(f"done: learned init of {dataset} in {result.seconds:.1f} s → {out}")
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
