"""Batched SIREN fitting: B independent INRs trained at once with batched matmuls and one Adam.

Why hand-written: plain autograd over ``[B, P, width]`` tensors reached only ~1.3–1.6× the one-at-a-time loop on
CPU. One training step (``make_train_step``) is a single plain-tensor function: activations feature-major
(``[B, width, P]``, so every hidden layer is one ``bmm`` with the weights in their stored ``[B, out, in]``
form), the K=2 first layer by angle addition over the pixel grid (sin/cos of the row and column terms only), a
hand-written backward (the cosines recomputed where they are consumed, the K=3 head's input gradient
element-wise), and Adam over one flat ``[B, n_params]`` buffer (the arithmetic of ``torch.optim.Adam``, so the
images stay independent: Adam is element-wise). ``torch.compile`` turns the step into one graph — the GEMMs
plus a handful of fused element-wise kernels — and on the CPU the batch goes through it in cache-sized chunks.

Per-item loss is the mean squared error over pixels and channels in ImageNet-normalised space (what a
per-image ``nn.MSELoss`` fit uses); the batch loss is the SUM over items, so each item's gradient is exactly its
own. PSNR is measured on de-normalised, clamped [0, 1] pixels. Items that stop early (gate reached, stalled)
are removed from the batch at the next check, so they stop costing compute.

The output of the fitted parameters equals ``izoo.siren.model.forward`` (tested).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Sequence

import torch

from izoo.fitting.phases import PhaseSettings
from izoo.fitting.stream import ADAM_BETAS, ADAM_EPS, FitResult, FlatLayout, ProgressFn, StreamFit, is_out_of_memory
from izoo.siren import model as siren
from izoo.siren.model import Params, SirenSpec
from izoo.siren.warm_start import WarmStart, warm_start

log = logging.getLogger(__name__)

#: ``compile: auto`` compiles the training step only for fits at least this big (activation elements × steps),
#: so small CPU runs (tests, demo) never pay the compile time (~10 s on two cores, less from Inductor's cache)
COMPILE_MIN_WORK = 2.0e10
#: bytes of one activation tensor per CPU chunk (16 CIFAR-sized items at width 64): the few activations a step
#: keeps then fit the last-level cache instead of streaming through DRAM
CPU_CHUNK_BYTES = 4 << 20


# --------------------------------------------------------------------------------------------- the training step

def make_train_step(spec: SirenSpec) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The fused training step of a chunk of SIRENs on a pixel grid: forward, hand-written backward, Adam.

    ``step(theta, m, v, target, xu, yv, hyper)`` returns the updated ``theta``, ``m``, ``v`` ``[b, n]``, the
    outputs ``[b, out, P]`` of the weights it started from (what a check measures PSNR on), and, compiled, the
    first layer's small sine/cosine tables. ``target`` is ``[b, out, P]`` (normalised), ``xu``/``yv`` the
    grid's column/row coordinates, ``hyper`` ``[b, 2]`` = per item ``[lr / (1 - β1^t), sqrt(1 - β2^t)]``. Functional, not in
    place: mutating chunk views of the full buffers would make torch.compile guard on their base (recompiles).

    Plain tensor code, run eagerly or through ``torch.compile`` (one graph per step, so dispatch and guard
    overhead is paid once, and Inductor fuses every element-wise pass around the batched GEMMs).
    """
    layout = FlatLayout(spec.param_shapes())
    w0 = float(spec.w0)
    n_layers = spec.depth
    beta1, beta2 = ADAM_BETAS

    def first_forward(w: torch.Tensor, bias: torch.Tensor, xu: torch.Tensor, yv: torch.Tensor,
                      fused: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``sin(w0 (W x + b))`` of the K = 2 first layer on the grid ``[b, width, P]`` (no GEMM), plus what its
        backward needs."""
        b, width, rows, cols = w.shape[0], w.shape[1], yv.shape[0], xu.shape[0]
        if fused:
            # angle addition: sin(u_col + v_row) from sin/cos tables of the column and row terms, H + W
            # transcendentals per neuron instead of H·W (written as broadcasts, which only a compiler makes fast)
            u = w0 * (w[:, :, 0:1] * xu + bias.unsqueeze(-1))           # [b, width, W]
            q = w0 * (w[:, :, 1:2] * yv)                                # [b, width, H]
            su, cu, sv, cv = torch.sin(u), torch.cos(u), torch.sin(q), torch.cos(q)
            h = su.unsqueeze(2) * cv.unsqueeze(3) + cu.unsqueeze(2) * sv.unsqueeze(3)
            return h.reshape(b, width, rows * cols), (su, cu, sv, cv)
        xy = torch.stack([xu.repeat(rows), yv.repeat_interleave(cols)], dim=-1)                    # [P, 2]
        a = torch.addcmul((w0 * bias).unsqueeze(-1), w0 * w[:, :, 0:1], xy[:, 0]).addcmul_(w0 * w[:, :, 1:2], xy[:, 1])
        return torch.sin(a), (a, xy)

    def first_backward(dh: torch.Tensor, saved: tuple[torch.Tensor, ...], xu: torch.Tensor, yv: torch.Tensor,
                       fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight ``[b, width, 2]`` and bias ``[b, width]`` gradients of the first layer from ``dL/dh``."""
        if fused:
            su, cu, sv, cv = saved       # the cosine again by angle addition, never stored
            c0 = cu.unsqueeze(2) * cv.unsqueeze(3) - su.unsqueeze(2) * sv.unsqueeze(3)
            dz0 = c0 * dh.view(c0.shape)
            gw = torch.stack([(dz0 * xu).sum(dim=(2, 3)), (dz0 * yv.unsqueeze(-1)).sum(dim=(2, 3))], dim=-1)
            return w0 * gw, w0 * dz0.sum(dim=(2, 3))
        a, xy = saved
        dz0 = torch.cos(a).mul_(dh)
        return w0 * torch.matmul(dz0, xy), w0 * dz0.sum(-1)

    def step(theta: torch.Tensor, m: torch.Tensor, v: torch.Tensor, target: torch.Tensor, xu: torch.Tensor,
             yv: torch.Tensor, hyper: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # traced by torch.compile: formulations that fuse well; eager: ones that need few full-size temporaries
        fused = torch.compiler.is_compiling()
        ws = layout.views(theta)
        b = theta.shape[0]
        pixels = yv.shape[0] * xu.shape[0]
        h, first_saved = first_forward(ws[0], ws[1], xu, yv, fused)
        sines, preacts = [h], [h]          # index = layer; preacts[0] is unused (the first layer keeps its own)
        for layer in range(1, n_layers - 1):                            # hidden layers, feature-major [b, width, P]
            if fused:
                a = w0 * (torch.bmm(ws[2 * layer], h) + ws[2 * layer + 1].unsqueeze(-1))
            else:   # bias and w0 in the GEMM's beta/alpha: no extra pass over the activation
                a = torch.baddbmm(ws[2 * layer + 1].unsqueeze(-1), ws[2 * layer], h, beta=w0, alpha=w0)
            h = torch.sin(a)
            sines.append(h)
            preacts.append(a)
        out = torch.bmm(ws[-2], h) + ws[-1].unsqueeze(-1)               # linear head [b, out, P]
        # per-item MSE over pixels and channels; the batch loss is the sum over items, so gradients stay per item
        dout = (out - target) * (2.0 / (out.shape[1] * pixels))
        grads: list[torch.Tensor] = [dout] * (2 * n_layers)
        grads[-2] = torch.bmm(dout, h.transpose(1, 2))
        grads[-1] = dout.sum(-1)
        head = ws[-2]
        if fused:
            # the head's input gradient has K = out_features (3): element-wise it fuses into the next kernel
            # instead of a thin GEMM writing a full activation
            dh = head[:, 0, :].unsqueeze(-1) * dout[:, 0:1, :]
            for k in range(1, head.shape[1]):
                dh = dh + head[:, k, :].unsqueeze(-1) * dout[:, k:k + 1, :]
        else:
            dh = torch.bmm(head.transpose(1, 2), dout)
        for layer in range(n_layers - 2, 0, -1):
            dz = torch.cos(preacts[layer]).mul_(dh)                      # d loss / d (W h + b), over w0
            grads[2 * layer] = w0 * torch.bmm(dz, sines[layer - 1].transpose(1, 2))
            grads[2 * layer + 1] = w0 * dz.sum(-1)
            dh = w0 * torch.bmm(ws[2 * layer].transpose(1, 2), dz)
        grads[0], grads[1] = first_backward(dh, first_saved, xu, yv, fused)
        g = torch.cat([x.reshape(b, -1) for x in grads], dim=1)
        # Adam, element-wise over the flat buffer: the arithmetic of torch.optim.Adam's single-tensor path
        m = torch.lerp(m, g, 1 - beta1)
        v = (v * beta2).addcmul_(g, g, value=1 - beta2)
        theta = theta - m / (v.sqrt() / hyper[:, 1:2] + ADAM_EPS) * hyper[:, 0:1]
        # returning the first layer's small tables makes Inductor store them instead of recomputing sin/cos
        # per pixel
        return (theta, m, v, out) + (first_saved if fused else ())

    return step


class _TrainSteps:
    """The eager and the ``torch.compile``d training step per architecture; a compiler failure falls back to
    eager once for the whole process, with a warning."""

    compiled: dict[SirenSpec, Callable] = {}
    broken = False

    def __init__(self, spec: SirenSpec, use_compile: bool):
        self.eager = make_train_step(spec)
        self.spec = spec
        self.use_compile = use_compile and not _TrainSteps.broken

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One step of one chunk (see ``make_train_step``)."""
        if self.use_compile and not _TrainSteps.broken:
            try:
                fn = _TrainSteps.compiled.get(self.spec)
                if fn is None:
                    fn = _TrainSteps.compiled[self.spec] = torch.compile(self.eager, dynamic=True)
                return fn(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure (no C++ toolchain, no triton, ...) → eager
                if is_out_of_memory(exc):
                    raise
                _TrainSteps.broken = True
                log.warning("torch.compile unavailable (%s: %s); using the eager training step",
                            type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        return self.eager(*args)


def want_compile(mode: str | bool, work: float) -> bool:
    """Whether to compile for a fit of ``work`` activation-elements × steps under ``compile`` = auto|on|off."""
    if isinstance(mode, bool):
        return mode
    if mode in ("on", "true", "always"):
        return True
    if mode in ("off", "false", "never"):
        return False
    return work >= COMPILE_MIN_WORK


def cpu_chunk_items(width: int, n_pixels: int, dtype: torch.dtype = torch.float32) -> int:
    """Items per training-step call on the CPU: about ``CPU_CHUNK_BYTES`` per activation, so a step's working set
    stays in the last-level cache (64 CIFAR items, compiled: 16.1 ms per step as 4 chunks of 16, 19.5 ms as one
    chunk of 64; eager 35 vs 46 ms — benchmarks/RESULTS.md)."""
    per_item = width * n_pixels * torch.finfo(dtype).bits // 8
    return max(1, CPU_CHUNK_BYTES // per_item)


# --------------------------------------------------------------------------------------------- the fitter

class SirenBatchFit(StreamFit):
    """One phase of fitting SIRENs to N images of one size through at most ``slots`` slots (continuous batching);
    resumable from ``state()``.

    With ``warm`` (a Meta-SGD init), every item takes its learned-lr SGD steps when it joins the slots, before
    its first Adam step; they count in its ``iterations``, and ``psnr_before`` is measured after them. The Adam
    steps then run at ``warm.adam_lr_factor`` × the schedule's learning rate.
    """

    family = "siren"

    def __init__(self, spec: SirenSpec, images01: torch.Tensor, settings: PhaseSettings, init: Params,
                 device: torch.device | str = "cpu", use_compile: bool | str = "auto",
                 chunk_items: int | None = None, slots: int | None = None, warm: WarmStart | None = None):
        if images01.dim() != 4 or images01.shape[1] != spec.out_features:
            raise ValueError(f"images must be [B, {spec.out_features}, H, W], got {tuple(images01.shape)}")
        self.spec = spec
        self.layout = FlatLayout(spec.param_shapes())
        super().__init__(self.layout.pack([p.to(images01.dtype) for p in init]), settings, device=device,
                         dtype=images01.dtype, slots=slots)
        n_items, _, height, width = images01.shape
        self.n_pixels = height * width
        # feature-major targets [N, 3, P]: normalised (what is fitted) and [0, 1] (what PSNR is measured on)
        t01 = images01.to(self.device).reshape(n_items, spec.out_features, -1)
        self.mean = torch.tensor(siren.IMAGENET_MEAN, device=self.device, dtype=self.dtype).view(1, 3, 1)
        self.std = torch.tensor(siren.IMAGENET_STD, device=self.device, dtype=self.dtype).view(1, 3, 1)
        self.all_t01 = t01.contiguous()
        self.all_tn = ((t01 - self.mean) / self.std).contiguous()
        coords = siren.coordinate_grid(height, width, device=self.device).to(self.dtype)     # [P, 2]
        self.xu = coords[:width, 0].contiguous()                                            # column x's
        self.yv = coords[::width, 1].contiguous()                                           # row y's
        work = float(min(n_items, self.slots)) * spec.width * self.n_pixels * (spec.depth - 1) * settings.max_steps
        self.train_step = _TrainSteps(spec, want_compile(use_compile, work))
        # CPU: cache-sized chunks of items per step call; CUDA: the whole batch (one image cannot fill a GPU)
        self.chunk_items = chunk_items or (cpu_chunk_items(spec.width, self.n_pixels, self.dtype)
                                           if self.device.type == "cpu" else max(n_items, 1))
        self._targets: tuple[torch.Tensor, torch.Tensor] | None = None
        # the learned lrs go to the device once: continuous batching refills the slots many times a phase
        self.warm = (None if warm is None or warm.steps <= 0 else
                     dataclasses.replace(warm, lrs=[lr.to(self.device, self.dtype) for lr in warm.lrs]))

    def _rows_changed(self) -> None:
        self._targets = None

    def _refill(self) -> None:
        joined = len(self.pos)
        super()._refill()
        if self.warm is None or len(self.pos) == joined:
            return
        images = (self.all_t01[self.pos[joined:].to(self.device)]
                  .reshape(-1, self.spec.out_features, len(self.yv), len(self.xu)))
        fresh = warm_start(self.layout.unpack(self.theta[joined:]), self.warm.lrs, images, self.spec, self.warm.steps)
        fresh_flat = self.layout.pack(fresh).to(self.dtype)
        self.theta = torch.cat([self.theta[:joined], fresh_flat])
        if self.best_theta is not None:
            self.best_theta = torch.cat([self.best_theta[:joined], fresh_flat])

    def _take_pending(self) -> FitResult | None:
        result = super()._take_pending()
        if result is not None and self.warm is not None:
            result.iterations = result.iterations + self.warm.steps
        return result

    def _lr_at(self, step: int) -> float:
        return self.settings.lr_at(step) * (self.warm.adam_lr_factor if self.warm is not None else 1.0)

    def _params_out(self, flat: torch.Tensor) -> Params:
        return self.layout.unpack(flat)

    def _train(self, check: torch.Tensor) -> torch.Tensor:
        """One training step of every active item, chunk by chunk; PSNR of the pre-step outputs of ``check``."""
        if self._targets is None:
            rows = self.pos.to(self.device)
            self._targets = (self.all_tn[rows], self.all_t01[rows])
        tn, t01 = self._targets
        hyper = self.adam_hyper()
        n = len(self.pos)
        one_chunk = n <= self.chunk_items
        new = None if one_chunk else (torch.empty_like(self.theta), torch.empty_like(self.m), torch.empty_like(self.v))
        outs = []
        check_d = check.to(self.device)
        for lo in range(0, n, self.chunk_items):
            part = slice(lo, lo + self.chunk_items)
            # detached chunks are not views of the full buffers for torch.compile, whose guards would otherwise
            # depend on the chunk/buffer size relation (one recompile per batch shape)
            theta, m, v, out = self.train_step(*(t[part].detach() for t in (self.theta, self.m, self.v, tn)),
                                               self.xu, self.yv, hyper[part])[:4]
            if one_chunk:
                new = (theta, m, v)
            else:   # written into fresh buffers: an out-of-memory in a later chunk leaves the state untouched
                new[0][part], new[1][part], new[2][part] = theta, m, v
            sel = check_d[part]
            if bool(sel.any()):
                outs.append(out[sel])
        self.theta, self.m, self.v = new
        if not outs:
            return torch.zeros(0, dtype=torch.float64)
        return self._psnr(torch.cat(outs), t01[check_d])

    def _psnr(self, out: torch.Tensor, t01: torch.Tensor) -> torch.Tensor:
        pred = (out * self.std + self.mean).clamp_(0.0, 1.0)
        mse = (pred - t01).pow_(2).mean(dim=(1, 2))
        return (-10.0 * torch.log10(mse.clamp_min(1e-12))).double().cpu()


def fit_images(images01: torch.Tensor, spec: SirenSpec, settings: PhaseSettings, init: Params | None = None,
               seeds: Sequence[int] | None = None, device: torch.device | str = "cpu",
               use_compile: bool | str = "auto", resume_state: dict[str, Any] | None = None,
               should_stop: Callable[[], bool] | None = None,
               on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
               progress: ProgressFn | None = None, slots: int | None = None,
               warm: WarmStart | None = None) -> FitResult:
    """Fit one phase for N images ``[N, 3, H, W]`` in [0, 1] from ``init`` (or SIREN inits from ``seeds``),
    ``slots`` at a time (default: all at once), each item first taking ``warm``'s steps when given."""
    if init is None:
        init = siren.init_params(spec, seeds if seeds is not None else [42] * images01.shape[0])
    fitter = SirenBatchFit(spec, images01, settings, init, device=device, use_compile=use_compile, slots=slots,
                           warm=warm)
    if resume_state is not None:
        fitter.load_state(resume_state)
    return fitter.run(should_stop=should_stop, on_checkpoint=on_checkpoint, progress=progress)

