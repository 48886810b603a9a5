"""Batched NeRF fitting: B scenes at once with stacked weights and one Adam (one small NeRF leaves a GPU idle).

Per step every active scene draws ``rays_per_batch`` rays from its training views — a share
``object_ray_fraction`` of them from object (non-white) pixels, the rest uniformly from all pixels (the paper's
adaptive sampling) — renders them with ``samples_per_ray`` stratified samples in [near, far] on white, and takes
the mean squared error. The batch loss is the SUM of the per-scene losses, so each scene's gradient is exactly
its own; Adam is element-wise, so the scenes stay independent (up to floating-point summation order).

Learning rate: exponential decay from ``lr`` to ``lr_min`` over the phase's schedule,
``lr · (lr_min / lr)^(step / schedule_steps)`` — the shape of the official NeRF code's schedule
(``lr · 0.1^(step / decay_steps)``), with the end point set by ``fit.lr_min``.

PSNR is measured on held-out views (``test_views`` of the scene: the views after the first ``train_views``),
rendered without jitter, as the mean over views of each view's PSNR on [0, 1] pixels. ``eval_views`` evenly
spaced held-out views are used (all when unset) and ``eval_size`` optionally renders them smaller (the
ground truth is area-downsampled to match).

Phases follow ``izoo.fitting.phases.PhaseSettings`` exactly like the 2D engine: a check at step 0 records
``psnr_before``; ``basic`` evaluates only at the start and the end (a held-out render costs as much as ~100
training steps, and ``basic`` stops no scene early); the refinement phases evaluate every ``check_every`` steps,
stop scenes that pass the gate or stall, keep the best weights, and drop finished scenes from the batch.

Randomness (ray choice, stratified jitter) is drawn per scene from a generator re-seeded at every step from
``(seed, scene key, step)``: a run resumed from a checkpoint continues bit-for-bit where it stopped, and a
scene's draws do not depend on the other scenes of its batch (the family keys scenes by their item id).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from izoo.errors import IzooError
from izoo.fitting.engine import BatchLoop  # the step bookkeeping (and FitInterrupted) shared with the 2D engine
from izoo.fitting.phases import PhaseSettings
from izoo.nerf import model
from izoo.nerf.model import NerfParams, NerfSpec
from izoo.nerf.render import pixel_rays, render_rays, render_views

log = logging.getLogger(__name__)

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
#: a pixel is "object" when any channel is below this (views are composited on pure white)
WHITE_THRESHOLD = 0.99
#: mixes scene key and step into per-step seeds (a large odd constant keeps the combinations apart)
_STEP_MIX = 1_000_003

ProgressFn = Callable[[int, int, int, float], None]  # (step, max_steps, n_active, mean PSNR of checked scenes)




@dataclass(frozen=True)
class RenderSettings:
    """The NeRF-specific part of a dataset's ``fit:`` section (rays, samples, bounds, evaluation)."""

    rays_per_batch: int = 2048
    samples_per_ray: int = 64
    near: float = 2.0
    far: float = 6.0
    object_ray_fraction: float = 0.5
    eval_views: int | None = None    # held-out views used for PSNR (None: all)
    eval_size: int | None = None     # render held-out views at this width (None: full size)
    eval_chunk_rays: int = 4096
    seed: int = 0                    # base of the per-step ray/jitter seeds

    def __post_init__(self) -> None:
        if not 0.0 <= self.object_ray_fraction <= 1.0:
            raise IzooError(f"fit.object_ray_fraction must lie in [0, 1] (got {self.object_ray_fraction})",
                            "config.yaml", "set it to the share of rays drawn from object pixels, e.g. 0.5")
        if self.rays_per_batch < 1 or self.samples_per_ray < 2:
            raise IzooError(f"fit.rays_per_batch must be >= 1 and fit.samples_per_ray >= 2 (got "
                            f"{self.rays_per_batch}, {self.samples_per_ray})", "config.yaml", "fix the fit section")
        if not 0.0 <= self.near < self.far:
            raise IzooError(f"fit.near/far must satisfy 0 <= near < far (got {self.near}, {self.far})",
                            "config.yaml", "use near: 2.0, far: 6.0 for Blender-style scenes")

    @classmethod
    def from_fit_config(cls, fit_cfg: Mapping[str, Any] | None) -> "RenderSettings":
        """Read the NeRF keys of a ``fit:`` section (missing keys take the paper's values)."""
        cfg = dict(fit_cfg or {})
        defaults = cls()
        ev = cfg.get("eval_views")
        es = cfg.get("eval_size")
        return cls(rays_per_batch=int(cfg.get("rays_per_batch", defaults.rays_per_batch)),
                   samples_per_ray=int(cfg.get("samples_per_ray", defaults.samples_per_ray)),
                   near=float(cfg.get("near", defaults.near)), far=float(cfg.get("far", defaults.far)),
                   object_ray_fraction=float(cfg.get("object_ray_fraction", defaults.object_ray_fraction)),
                   eval_views=None if ev in (None, 0, "all") else int(ev),
                   eval_size=None if es in (None, 0) else int(es),
                   eval_chunk_rays=int(cfg.get("eval_chunk_rays", defaults.eval_chunk_rays)),
                   seed=int(cfg.get("ray_seed", defaults.seed)))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, recorded in weight files."""
        return asdict(self)


@dataclass
class NerfFitResult:
    """Per-scene outcome of fitting one batch in one phase (arrays in batch order, tensors on the CPU)."""

    params: NerfParams        # name -> [B, ...]
    psnr_before: np.ndarray   # float32, held-out PSNR of the initial weights
    psnr: np.ndarray          # float32, held-out PSNR of the returned weights
    iterations: np.ndarray    # int64, steps this scene took in this phase
    seconds: np.ndarray       # float32, this scene's share of the batch's wall-clock time
    passed: np.ndarray        # bool, psnr >= gate

    def __len__(self) -> int:
        return int(self.psnr.shape[0])


def lr_at(settings: PhaseSettings, step: int) -> float:
    """Learning rate of step ``step``: exponential decay from ``lr`` to ``lr_min`` over ``schedule_steps``."""
    t = min(step, settings.schedule_steps) / max(settings.schedule_steps, 1)
    if settings.lr_min <= 0 or settings.lr_min >= settings.lr:
        return settings.lr if settings.lr_min <= 0 else settings.lr_min
    return settings.lr * (settings.lr_min / settings.lr) ** t


def eval_view_indices(test_views: Sequence[int], n: int | None) -> list[int]:
    """``n`` evenly spaced entries of ``test_views`` (all of them when ``n`` is None or too big)."""
    views = list(test_views)
    if n is None or n >= len(views):
        return views
    picks = np.linspace(0, len(views) - 1, n).round().astype(int)
    return [views[k] for k in picks]


class SceneData:
    """Training pixels and held-out views of B scenes, flattened so scenes may have different view counts.

    Scene ``b``'s training pixel ``k`` (local flat index ``view·H·W + row·W + col``) has colour
    ``rgb[pix_off[b] + k]`` and pose ``poses[view_off[b] + view]``; its object pixels are
    ``obj_idx[obj_off[b] : obj_off[b] + obj_count[b]]``.
    """

    def __init__(self, scenes: Sequence[Any], settings: RenderSettings, device: torch.device | str = "cpu"):
        if not scenes:
            raise ValueError("no scenes to fit")
        self.device = torch.device(device)
        height, width = int(scenes[0].height), int(scenes[0].width)
        if any((int(s.height), int(s.width)) != (height, width) for s in scenes):
            raise IzooError("scenes of one batch have different image sizes", None,
                            "set source.size so every scene is resized to the same size")
        self.height, self.width = height, width
        rgbs, poses, obj, n_pix, n_obj, n_views = [], [], [], [], [], []
        eval_imgs, eval_poses, eval_focal = [], [], []
        for s in scenes:
            train = list(s.train_views)
            imgs = torch.as_tensor(s.images)[train].float()
            rgbs.append(imgs.reshape(-1, 3))
            poses.append(torch.as_tensor(s.poses)[train].float())
            is_obj = (imgs < WHITE_THRESHOLD).any(dim=-1).reshape(-1)
            obj.append(is_obj.nonzero().squeeze(1))
            n_pix.append(imgs.shape[0] * height * width)
            n_obj.append(int(is_obj.sum()))
            n_views.append(len(train))
            held_out = list(s.test_views)
            if not held_out:
                log.warning("scene has no held-out views; its PSNR is measured on training views")
                held_out = train
            picks = eval_view_indices(held_out, settings.eval_views)
            ev = torch.as_tensor(s.images)[picks].float()
            focal = float(s.focal)
            if settings.eval_size is not None and settings.eval_size != width:
                scale = settings.eval_size / width
                eh, ew = max(1, round(height * scale)), int(settings.eval_size)
                ev = F.interpolate(ev.permute(0, 3, 1, 2), size=(eh, ew), mode="area").permute(0, 2, 3, 1)
                focal = focal * scale
            eval_imgs.append(ev)
            eval_poses.append(torch.as_tensor(s.poses)[picks].float())
            eval_focal.append(focal)
        dev = self.device
        self.rgb = torch.cat(rgbs).to(dev)
        self.poses = torch.cat(poses).to(dev)
        self.obj_idx = torch.cat(obj).to(dev)
        self.n_pix = torch.tensor(n_pix, device=dev)
        self.n_obj = torch.tensor(n_obj, device=dev)
        self.pix_off = torch.tensor(np.concatenate([[0], np.cumsum(n_pix)[:-1]]), device=dev)
        self.obj_off = torch.tensor(np.concatenate([[0], np.cumsum(n_obj)[:-1]]), device=dev)
        self.view_off = torch.tensor(np.concatenate([[0], np.cumsum(n_views)[:-1]]), device=dev)
        self.focal = torch.tensor([float(s.focal) for s in scenes], device=dev)
        # per scene (held-out view counts may differ between scenes): [Ve, h, w, 3], [Ve, 4, 4]
        self.eval_images = [e.to(dev) for e in eval_imgs]
        self.eval_poses = [p.to(dev) for p in eval_poses]
        self.eval_focal = torch.tensor(eval_focal, device=dev)

    def sample_rays(self, rows: torch.Tensor, u: torch.Tensor,
                    object_fraction: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training rays of the scenes ``rows`` from uniform draws ``u`` ``[A, R]`` (float64 in [0, 1)).

        The first ``round(object_fraction · R)`` rays of each scene come from its object pixels, the rest from all
        its pixels. Returns origins, directions and target colours ``[A, R, 3]``.
        """
        n_obj_rays = int(round(object_fraction * u.shape[1]))
        n_pix = self.n_pix[rows].unsqueeze(1)
        n_obj = self.n_obj[rows].unsqueeze(1)
        uniform = (u * n_pix).long().clamp_max(n_pix - 1)
        local = uniform
        if n_obj_rays > 0 and len(self.obj_idx) > 0:
            safe_obj = n_obj.clamp_min(1)
            pick = (u[:, :n_obj_rays] * safe_obj).long().clamp_max(safe_obj - 1) + self.obj_off[rows].unsqueeze(1)
            # a scene with no object pixel (all white) indexes past its empty range: clamp, then use uniform rays
            from_obj = self.obj_idx[pick.clamp_max(len(self.obj_idx) - 1)]
            head = torch.where(n_obj > 0, from_obj, uniform[:, :n_obj_rays])
            local = torch.cat([head, uniform[:, n_obj_rays:]], dim=1)
        hw = self.height * self.width
        view = local // hw
        rest = local % hw
        ij = torch.stack([rest % self.width, rest // self.width], dim=-1)
        c2w = self.poses[self.view_off[rows].unsqueeze(1) + view]             # [A, R, 4, 4]
        rays_o, rays_d = pixel_rays(ij, self.focal[rows].view(-1, 1), self.height, self.width, c2w)
        target = self.rgb[self.pix_off[rows].unsqueeze(1) + local]
        return rays_o, rays_d, target


def _adam_step(params: list[torch.Tensor], grads: list[torch.Tensor], m: list[torch.Tensor], v: list[torch.Tensor],
               step: int, lr: float) -> None:
    """One Adam step, in place (the arithmetic of ``torch.optim.Adam``'s single-tensor path).

    Written out instead of ``torch.optim.Adam`` because finished scenes leave the batch: the moment buffers
    are then sliced along the scene dim, which is simplest with plain tensors we own.
    """
    beta1, beta2 = ADAM_BETAS
    t = step + 1
    bias1 = 1 - beta1 ** t
    bias2_sqrt = math.sqrt(1 - beta2 ** t)
    with torch.no_grad():
        for p, g, m_, v_ in zip(params, grads, m, v):
            m_.lerp_(g, 1 - beta1)
            v_.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            p.addcdiv_(m_, (v_.sqrt() / bias2_sqrt).add_(ADAM_EPS), value=-lr / bias1)


def step_seed(base: int, key: int, step: int) -> int:
    """Seed of one scene's random draws at one step: depends on (base, scene key, step) only."""
    return ((int(base) * _STEP_MIX + int(key)) * _STEP_MIX + int(step)) % (1 << 62)


class NerfBatchFit(BatchLoop):
    """One phase of fitting B NeRFs to B scenes; resumable bit-for-bit from ``state()``.

    Each scene draws its rays and jitter from its own generator seeded by ``step_seed(render.seed, key, step)``
    (``ray_keys``, default the batch positions), so its draws do not depend on which scenes share its batch.
    """

    def __init__(self, spec: NerfSpec, scenes: Sequence[Any], phase: PhaseSettings, render: RenderSettings,
                 init: Mapping[str, torch.Tensor], device: torch.device | str = "cpu",
                 ray_keys: Sequence[int] | None = None):
        self.spec, self.settings, self.render = spec, phase, render
        self.device = torch.device(device)
        self.data = SceneData(scenes, render, self.device)
        self.n_items = len(scenes)
        self.ray_keys = [int(k) for k in (ray_keys if ray_keys is not None else range(self.n_items))]
        if len(self.ray_keys) != self.n_items:
            raise ValueError(f"{len(self.ray_keys)} ray keys for {self.n_items} scenes")
        self.generator = torch.Generator(device=self.device)
        self.names = spec.param_names()
        init = model.batch_params(init, spec)
        for name, shape in spec.param_shapes().items():
            if tuple(init[name].shape) != (self.n_items, *shape):
                raise ValueError(f"init {name} has shape {tuple(init[name].shape)}, expected {(self.n_items, *shape)}")
        self._fresh([init[k].detach().to(self.device, torch.float32).clone() for k in self.names])

    # ----- state
    def _fresh(self, theta: list[torch.Tensor]) -> None:
        n = self.n_items
        self.step = 0
        self.rows = torch.arange(n)
        self.theta = theta
        self.m = [torch.zeros_like(p) for p in theta]
        self.v = [torch.zeros_like(p) for p in theta]
        self.best_theta = [p.clone() for p in theta] if self.settings.keep_best else None
        self.best_psnr = torch.full((n,), -math.inf, dtype=torch.float64)
        self.stall_ref = torch.full((n,), -math.inf, dtype=torch.float64)
        self.stall_step = torch.zeros(n, dtype=torch.int64)
        self.out_theta = [torch.zeros((n, *p.shape[1:]), dtype=torch.float32) for p in theta]  # CPU
        self.out_psnr = torch.full((n,), float("nan"), dtype=torch.float64)
        self.out_iters = torch.zeros(n, dtype=torch.int64)
        self.psnr_before = torch.full((n,), float("nan"), dtype=torch.float64)
        self.seconds = torch.zeros(n, dtype=torch.float64)
        self.finished = torch.zeros(n, dtype=torch.bool)

    def state(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit (CPU tensors)."""
        cpu = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
        cpus = lambda ts: None if ts is None else [cpu(t) for t in ts]  # noqa: E731
        return {"family": "nerf", "step": self.step, "rows": cpu(self.rows), "theta": cpus(self.theta),
                "m": cpus(self.m), "v": cpus(self.v), "best_theta": cpus(self.best_theta),
                "best_psnr": cpu(self.best_psnr), "stall_ref": cpu(self.stall_ref), "stall_step": cpu(self.stall_step),
                "out_theta": cpus(self.out_theta), "out_psnr": cpu(self.out_psnr), "out_iters": cpu(self.out_iters),
                "psnr_before": cpu(self.psnr_before), "seconds": cpu(self.seconds), "finished": cpu(self.finished),
                "n_items": self.n_items, "phase": self.settings.phase}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state()`` of an interrupted run of the same batch and phase."""
        if (state.get("family") != "nerf" or state.get("n_items") != self.n_items
                or state.get("phase") != self.settings.phase):
            raise ValueError("checkpoint belongs to another batch, phase or model family")
        devs = lambda ts: None if ts is None else [t.to(self.device).clone() for t in ts]  # noqa: E731
        self.step = int(state["step"])
        self.rows = state["rows"].clone()
        self.theta, self.m, self.v = devs(state["theta"]), devs(state["m"]), devs(state["v"])
        self.best_theta = devs(state["best_theta"])
        self.out_theta = [t.clone() for t in state["out_theta"]]
        for key in ("best_psnr", "stall_ref", "stall_step", "out_psnr", "out_iters", "psnr_before", "seconds",
                    "finished"):
            setattr(self, key, state[key].clone())

    # ----- maths
    def _params(self, theta: list[torch.Tensor]) -> NerfParams:
        return dict(zip(self.names, theta))

    def evaluate(self, theta: list[torch.Tensor] | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Held-out PSNR (dB, float64 on the CPU) of the scenes ``rows`` (default: the active ones).

        ``theta`` holds the parameters of exactly those scenes, in that order (default: the active ones).
        """
        theta = self.theta if theta is None else theta
        rows = (self.rows if rows is None else rows).tolist()
        data = self.data
        psnr = torch.empty(len(rows), dtype=torch.float64)
        # scenes with the same held-out view count render together (one batched pass; usually the whole batch)
        groups: dict[tuple[int, ...], list[int]] = {}
        for local, row in enumerate(rows):
            groups.setdefault(tuple(data.eval_images[row].shape), []).append(local)
        for shape, locals_ in groups.items():
            sel = [rows[k] for k in locals_]
            ld = torch.as_tensor(locals_, device=self.device)
            params = {name: p[ld] for name, p in zip(self.names, theta)}
            gt = torch.stack([data.eval_images[r] for r in sel])
            pred = render_views(params, self.spec, torch.stack([data.eval_poses[r] for r in sel]), shape[1], shape[2],
                                data.eval_focal[torch.as_tensor(sel, device=self.device)], self.render.near,
                                self.render.far, self.render.samples_per_ray, chunk_rays=self.render.eval_chunk_rays)
            mse = (pred.clamp(0.0, 1.0) - gt).pow(2).mean(dim=(2, 3, 4))             # [A, Ve]
            psnr[torch.as_tensor(locals_)] = (-10.0 * torch.log10(mse.clamp_min(1e-12))).mean(dim=1).double().cpu()
        return psnr

    def _draws(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-scene uniform draws of this step: ray choice ``[A, R]`` (float64) and depth jitter ``[A, R, S]``."""
        n_rays, n_samples = self.render.rays_per_batch, self.render.samples_per_ray
        rays, jitter = [], []
        for row in self.rows.tolist():
            self.generator.manual_seed(step_seed(self.render.seed, self.ray_keys[row], self.step))
            rays.append(torch.rand(n_rays, device=self.device, dtype=torch.float64, generator=self.generator))
            jitter.append(torch.rand(n_rays, n_samples, device=self.device, generator=self.generator))
        return torch.stack(rays), torch.stack(jitter)

    def _train_step(self) -> None:
        u, jitter = self._draws()
        rays_o, rays_d, target = self.data.sample_rays(self.rows.to(self.device), u, self.render.object_ray_fraction)
        theta = [p.detach().requires_grad_(True) for p in self.theta]
        out = render_rays(self._params(theta), self.spec, rays_o, rays_d, self.render.near, self.render.far,
                          self.render.samples_per_ray, perturb=True, jitter=jitter)
        loss = (out["rgb"] - target).pow(2).mean(dim=(1, 2)).sum()
        grads = torch.autograd.grad(loss, theta)
        self.theta = [p.detach() for p in theta]
        _adam_step(self.theta, list(grads), self.m, self.v, self.step, lr_at(self.settings, self.step))

    # ----- bookkeeping at checks
    def _check(self, psnr: torch.Tensor, final: bool) -> None:
        """Update trackers at a check; finish the scenes that stop and drop them from the batch."""
        st = self.settings
        rows = self.rows
        if self.step == 0:
            self.psnr_before[rows] = psnr
        improved = psnr > self.best_psnr[rows]
        if st.keep_best and bool(improved.any()):
            idx = improved.nonzero().squeeze(1).to(self.device)
            for best, cur in zip(self.best_theta, self.theta):
                best[idx] = cur[idx]
        stop = self._update_trackers(psnr, improved, final)
        if not bool(stop.any()):
            return
        local = stop.nonzero().squeeze(1)
        done = rows[local]
        source = self.best_theta if st.keep_best else self.theta
        ld = local.to(self.device)
        for out, src in zip(self.out_theta, source):
            out[done] = src[ld].to("cpu", torch.float32)
        self.out_psnr[done] = self.best_psnr[done] if st.keep_best else psnr[local]
        self.out_iters[done] = self.step
        self.finished[done] = True
        kd = (~stop).nonzero().squeeze(1).to(self.device)
        self.rows = rows[(~stop).nonzero().squeeze(1)]
        self.theta = [p[kd] for p in self.theta]
        self.m = [p[kd] for p in self.m]
        self.v = [p[kd] for p in self.v]
        if self.best_theta is not None:
            self.best_theta = [p[kd] for p in self.best_theta]

    def _is_check(self, final: bool) -> bool:
        st = self.settings
        if final or self.step == 0:
            return True
        # basic stops nothing early, so mid-phase held-out renders would only cost time
        needs_checks = st.stop_on_pass or st.patience is not None or st.keep_best
        return needs_checks and self.step % st.check_every == 0

    # ----- the loop
    def run(self, should_stop: Callable[[], bool] | None = None,
            on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
            progress: ProgressFn | None = None) -> NerfFitResult:
        """Train until every scene has finished; a stop request checkpoints and raises ``FitInterrupted``."""
        st = self.settings
        tick = time.perf_counter()
        resumed_at = self.step
        while len(self.rows) > 0:
            tick = self._stop_or_checkpoint(tick, resumed_at, should_stop, on_checkpoint)
            final = self.step >= st.max_steps
            if self._is_check(final):
                with torch.no_grad():
                    psnr = self.evaluate()
                tick = self._charge(tick)
                self._check(psnr, final)
                if progress is not None and len(psnr):
                    progress(self.step, st.max_steps, len(self.rows), float(psnr.mean()))
                if len(self.rows) == 0:
                    break
            self._train_step()
            self.step += 1
        self._charge(tick)
        psnr = self.out_psnr.float().numpy()
        return NerfFitResult(params={k: t.clone() for k, t in zip(self.names, self.out_theta)},
                             psnr_before=self.psnr_before.float().numpy(), psnr=psnr,
                             iterations=self.out_iters.numpy().astype(np.int64),
                             seconds=self.seconds.float().numpy(), passed=psnr >= st.gate_psnr)



def fit_scenes(scenes: Sequence[Any], spec: NerfSpec, phase: PhaseSettings, render: RenderSettings,
               init: Mapping[str, torch.Tensor] | None = None, seeds: Sequence[int] | None = None,
               device: torch.device | str = "cpu", resume_state: Mapping[str, Any] | None = None,
               should_stop: Callable[[], bool] | None = None,
               on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
               progress: ProgressFn | None = None, ray_keys: Sequence[int] | None = None) -> NerfFitResult:
    """Fit one phase for B scenes (``izoo.datasets`` ``Scene`` objects) from ``init`` (or inits from ``seeds``)."""
    if init is None:
        init = model.init_params(spec, seeds if seeds is not None else [42] * len(scenes))
    fitter = NerfBatchFit(spec, scenes, phase, render, init, device=device, ray_keys=ray_keys)
    if resume_state is not None:
        fitter.load_state(resume_state)
    return fitter.run(should_stop=should_stop, on_checkpoint=on_checkpoint, progress=progress)
