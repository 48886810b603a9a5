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

Phases follow ``izoo.fitting.phases.PhaseSettings`` exactly like the 2D engine, through the same continuous
batching (``izoo.fitting.stream``: each scene at its own step, a finished scene's slot taken by the next one): a
check at step 0 records ``psnr_before``; a ``basic`` phase with ``fit.stop: budget`` evaluates only at the start
and the end (a held-out render costs as much as ~100 training steps, and it stops no scene early); phases that
can stop a scene early evaluate every ``check_every`` steps, stop scenes that pass the gate or stall, keep the
best weights, and hand the slot to the next scene.

Randomness (ray choice, stratified jitter) is drawn per scene from a generator re-seeded at every step from
``(seed, scene key, step)``: a run resumed from a checkpoint continues bit-for-bit where it stopped, and a
scene's draws do not depend on the other scenes of its batch (the family keys scenes by their item id).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from izoo.errors import IzooError
from izoo.fitting.phases import PhaseSettings
from izoo.fitting.stream import ADAM_BETAS, ADAM_EPS, FitResult, FlatLayout, ProgressFn, StreamFit
from izoo.nerf import model
from izoo.nerf.model import NerfParams, NerfSpec
from izoo.nerf.render import pixel_rays, render_rays, render_views

log = logging.getLogger(__name__)

#: a pixel is "object" when any channel is below this (views are composited on pure white)
WHITE_THRESHOLD = 0.99
#: mixes scene key and step into per-step seeds (a large odd constant keeps the combinations apart)
_STEP_MIX = 1_000_003


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


def step_seed(base: int, key: int, step: int) -> int:
    """Seed of one scene's random draws at one step: depends on (base, scene key, step) only."""
    return ((int(base) * _STEP_MIX + int(key)) * _STEP_MIX + int(step)) % (1 << 62)


class NerfBatchFit(StreamFit):
    """One phase of fitting NeRFs to N scenes through at most ``slots`` slots (continuous batching); resumable
    bit-for-bit from ``state()``.

    Each scene draws its rays and jitter from its own generator seeded by ``step_seed(render.seed, key, step)``
    with its own step (``ray_keys``, default the positions), so its draws do not depend on which scenes share its
    batch or when it joined.
    """

    family = "nerf"
    checks_are_cheap = False   # a check renders the held-out views (~100 training steps' worth)

    def __init__(self, spec: NerfSpec, scenes: Sequence[Any], phase: PhaseSettings, render: RenderSettings,
                 init: Mapping[str, torch.Tensor], device: torch.device | str = "cpu",
                 ray_keys: Sequence[int] | None = None, slots: int | None = None):
        self.spec, self.render = spec, render
        self.names = spec.param_names()
        n_items = len(scenes)
        init = model.batch_params(init, spec)
        shapes = spec.param_shapes()
        for name, shape in shapes.items():
            if tuple(init[name].shape) != (n_items, *shape):
                raise ValueError(f"init {name} has shape {tuple(init[name].shape)}, expected {(n_items, *shape)}")
        self.layout = FlatLayout([shapes[k] for k in self.names])
        super().__init__(self.layout.pack([init[k].detach().float() for k in self.names]), phase, device=device,
                         slots=slots)
        self.data = SceneData(scenes, render, self.device)
        self.ray_keys = [int(k) for k in (ray_keys if ray_keys is not None else range(n_items))]
        if len(self.ray_keys) != n_items:
            raise ValueError(f"{len(self.ray_keys)} ray keys for {n_items} scenes")
        self.generator = torch.Generator(device=self.device)

    # ----- maths
    def _lr_at(self, step: int) -> float:
        return lr_at(self.settings, step)

    def _params(self, theta: torch.Tensor) -> NerfParams:
        return dict(zip(self.names, self.layout.views(theta)))

    def _params_out(self, flat: torch.Tensor) -> NerfParams:
        return dict(zip(self.names, self.layout.unpack(flat)))

    def evaluate(self, theta: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Held-out PSNR (dB, float64 on the CPU) of the scenes at positions ``rows``.

        ``theta`` ``[len(rows), n]`` holds the flat parameters of exactly those scenes, in that order (default: the
        active scenes, or every scene's init before the stream started).
        """
        if theta is None:
            if len(self.pos):
                theta, rows = self.theta, self.pos
            else:
                theta, rows = self.init_flat.to(self.device), torch.arange(self.n_items)
        rows = rows.tolist()
        data = self.data
        psnr = torch.empty(len(rows), dtype=torch.float64)
        # scenes with the same held-out view count render together (one batched pass; usually the whole batch)
        groups: dict[tuple[int, ...], list[int]] = {}
        for local, row in enumerate(rows):
            groups.setdefault(tuple(data.eval_images[row].shape), []).append(local)
        for shape, locals_ in groups.items():
            sel = [rows[k] for k in locals_]
            ld = torch.as_tensor(locals_, device=self.device)
            params = self._params(theta[ld])
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
        for pos, step in zip(self.pos.tolist(), self.steps.tolist()):
            self.generator.manual_seed(step_seed(self.render.seed, self.ray_keys[pos], step))
            rays.append(torch.rand(n_rays, device=self.device, dtype=torch.float64, generator=self.generator))
            jitter.append(torch.rand(n_rays, n_samples, device=self.device, generator=self.generator))
        return torch.stack(rays), torch.stack(jitter)

    def _train(self, check: torch.Tensor) -> torch.Tensor:
        """Held-out PSNR of the ``check`` scenes' current weights, then one training step of every active scene."""
        psnr = torch.zeros(0, dtype=torch.float64)
        if bool(check.any()):
            with torch.no_grad():
                psnr = self.evaluate(self.theta[check.to(self.device)], self.pos[check])
        u, jitter = self._draws()
        rays_o, rays_d, target = self.data.sample_rays(self.pos.to(self.device), u, self.render.object_ray_fraction)
        theta = self.theta.detach().requires_grad_(True)
        out = render_rays(self._params(theta), self.spec, rays_o, rays_d, self.render.near, self.render.far,
                          self.render.samples_per_ray, perturb=True, jitter=jitter)
        loss = (out["rgb"] - target).pow(2).mean(dim=(1, 2)).sum()
        (grad,) = torch.autograd.grad(loss, theta)
        hyper = self.adam_hyper()
        with torch.no_grad():   # Adam, element-wise over the flat buffer, each scene at its own step
            beta1, beta2 = ADAM_BETAS
            self.m = torch.lerp(self.m, grad, 1 - beta1)
            self.v = (self.v * beta2).addcmul_(grad, grad, value=1 - beta2)
            self.theta = theta.detach() - self.m / (self.v.sqrt() / hyper[:, 1:2] + ADAM_EPS) * hyper[:, 0:1]
        return psnr


def fit_scenes(scenes: Sequence[Any], spec: NerfSpec, phase: PhaseSettings, render: RenderSettings,
               init: Mapping[str, torch.Tensor] | None = None, seeds: Sequence[int] | None = None,
               device: torch.device | str = "cpu", resume_state: Mapping[str, Any] | None = None,
               should_stop: Callable[[], bool] | None = None,
               on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
               progress: ProgressFn | None = None, ray_keys: Sequence[int] | None = None,
               slots: int | None = None) -> FitResult:
    """Fit one phase for N scenes (``izoo.datasets`` ``Scene`` objects) from ``init`` (or inits from ``seeds``),
    ``slots`` at a time (default: all at once)."""
    if init is None:
        init = model.init_params(spec, seeds if seeds is not None else [42] * len(scenes))
    fitter = NerfBatchFit(spec, scenes, phase, render, init, device=device, ray_keys=ray_keys, slots=slots)
    if resume_state is not None:
        fitter.load_state(resume_state)
    return fitter.run(should_stop=should_stop, on_checkpoint=on_checkpoint, progress=progress)
