"""Batched SIREN fitting: B independent INRs trained at once with batched matmuls and one Adam.

Why hand-written: plain autograd over ``[B, P, width]`` tensors reached only ~1.6× the one-at-a-time loop on
CPU. This engine keeps activations feature-major (``[B, width, P]``, so every layer is one ``baddbmm`` with the
weights in their stored ``[B, out, in]`` form, ``w0`` folded into the GEMM's alpha/beta), does the K=2 first
layer element-wise, computes ``sin`` and ``cos`` together (optionally in one ``torch.compile`` kernel) and keeps
the cosine for a hand-written backward,
and runs Adam as a handful of in-place ops over one flat ``[B, n_params]`` buffer (the update is bitwise the
arithmetic of ``torch.optim.Adam``'s single-tensor path, so the images stay independent: Adam is element-wise).

Per-item loss is the mean squared error over pixels and channels in ImageNet-normalised space (what a
per-image ``nn.MSELoss`` fit uses); the batch loss is the SUM over items, so each item's gradient is exactly its
own. PSNR is measured on de-normalised, clamped [0, 1] pixels. Items that stop early (gate reached, stalled)
are removed from the batch at the next check, so they stop costing compute.

The output of the fitted parameters equals ``izoo.models.siren.forward`` (tested).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from izoo.errors import IzooError
from izoo.fitting.phases import PhaseSettings
from izoo.models import siren
from izoo.models.siren import Params, SirenSpec

log = logging.getLogger(__name__)

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
#: ``compile: auto`` compiles the sin/cos kernel only for fits at least this big (activation elements × steps),
#: so small CPU runs (tests, demo) never pay the compile time
COMPILE_MIN_WORK = 2.0e10

ProgressFn = Callable[[int, int, int, float], None]  # (step, max_steps, n_active, mean PSNR of active items)


class FitInterrupted(Exception):
    """A stop was requested (signal or deadline); the in-flight state was handed to the checkpoint callback."""


@dataclass
class FitResult:
    """Per-item outcome of fitting one batch in one phase (arrays in batch order, tensors on the CPU)."""

    params: Params             # [w0, b0, ...] stacked over items
    psnr_before: np.ndarray    # float32, PSNR of the initial weights
    psnr: np.ndarray           # float32, PSNR of the returned weights
    iterations: np.ndarray     # int64, steps this item took in this phase
    seconds: np.ndarray        # float32, this item's share of the batch's wall-clock time
    passed: np.ndarray         # bool, psnr >= gate

    def __len__(self) -> int:
        return int(self.psnr.shape[0])


# --------------------------------------------------------------------------------------------- device handling

def resolve_device(name: str = "auto", tf32: bool = True) -> torch.device:
    """``auto`` → CUDA when available, else CPU; sets the TF32 matmul switch on CUDA (recorded by the caller)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise IzooError("fit.device is 'cuda' but no CUDA device is visible", "config.yaml",
                            "set fit.device to auto or cpu, or run on a GPU node")
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
        torch.backends.cudnn.allow_tf32 = bool(tf32)
    elif name != "cpu":
        raise IzooError(f"unknown fit.device {name!r}", "config.yaml", "use auto, cpu or cuda")
    return torch.device(name)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA and CPU allocator out-of-memory errors."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


# --------------------------------------------------------------------------------------------- sin/cos kernels

def _first_math(w: torch.Tensor, b: torch.Tensor, xs: torch.Tensor, w0: float, s_out: torch.Tensor,
                c_out: torch.Tensor) -> None:
    a = (w[:, :, 0:1] * xs[0] + w[:, :, 1:2] * xs[1] + b.unsqueeze(-1)) * w0
    s_out.copy_(torch.sin(a))
    c_out.copy_(torch.cos(a))


def _hidden_math(zmm: torch.Tensor, b: torch.Tensor, w0: float, s_out: torch.Tensor) -> None:
    """``zmm`` holds ``W h`` on entry and ``cos(w0 (W h + b))`` on exit; ``s_out`` gets the sine."""
    a = (zmm + b.unsqueeze(-1)) * w0
    s_out.copy_(torch.sin(a))
    zmm.copy_(torch.cos(a))


def _head_back_math(w: torch.Tensor, dz_out: torch.Tensor, c: torch.Tensor, w0: float, gb: torch.Tensor) -> None:
    """``c`` holds ``cos`` on entry and ``dz = cos · (Wᵀ dz_out)`` on exit (K = out_features, element-wise, not a
    thin GEMM); ``gb`` gets the layer's bias gradient ``w0 Σ_p dz``."""
    dh = w[:, 0, :].unsqueeze(-1) * dz_out[:, 0:1, :]
    for k in range(1, w.shape[1]):
        dh = dh + w[:, k, :].unsqueeze(-1) * dz_out[:, k:k + 1, :]
    dz = c * dh
    c.copy_(dz)
    gb.copy_(dz.sum(dim=-1) * w0)


def _first_back_math(c: torch.Tensor, dh: torch.Tensor, xs: torch.Tensor, w0: float, gw: torch.Tensor,
                     gb: torch.Tensor) -> None:
    """Gradients of the first layer from ``dz = cos · dh`` without materialising ``dz``."""
    dz = c * dh
    gb.copy_(dz.sum(dim=-1) * w0)
    gw.copy_(torch.stack([(dz * xs[0]).sum(dim=-1), (dz * xs[1]).sum(dim=-1)], dim=-1) * w0)


class _Kernels:
    """Eager or ``torch.compile``d sin/cos kernels writing into caller-owned buffers (CPU allocations of fresh
    activation-sized tensors every step cost page faults, ~30 % of a step); compilation failures fall back to
    eager once, with a warning."""

    compiled: dict[str, Callable] = {}
    broken = False

    def __init__(self, use_compile: bool):
        self.use_compile = use_compile and not _Kernels.broken

    def _compiled(self, key: str, math_fn: Callable, *args: Any) -> bool:
        """Run ``math_fn`` compiled; False (and eager from then on) if compilation is unavailable."""
        if not self.use_compile or _Kernels.broken:
            return False
        try:
            fn = _Kernels.compiled.get(key)
            if fn is None:
                fn = _Kernels.compiled[key] = torch.compile(math_fn, dynamic=True)
            fn(*args)
            return True
        except Exception as exc:  # noqa: BLE001 - any compiler failure (no C++ toolchain, no triton, ...) → eager
            if is_out_of_memory(exc):
                raise
            _Kernels.broken = True
            log.warning("torch.compile unavailable (%s: %s); using the eager sin/cos kernels",
                        type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            return False

    def first(self, w: torch.Tensor, b: torch.Tensor, xs: torch.Tensor, w0: float, s_out: torch.Tensor,
              c_out: torch.Tensor) -> None:
        """``sin``/``cos`` of the first layer ``w0 (W x + b)``, its K = 2 inputs done element-wise, not as a GEMM."""
        if self._compiled("first", _first_math, w, b, xs, w0, s_out, c_out):
            return
        ws, bs = w * w0, b * w0   # fold w0 into the tiny weights instead of a pass over the activations
        torch.addcmul(bs.unsqueeze(-1), ws[:, :, 0:1], xs[0], out=c_out)
        c_out.addcmul_(ws[:, :, 1:2], xs[1])
        torch.sin(c_out, out=s_out)
        c_out.cos_()

    def head_back(self, w: torch.Tensor, dz_out: torch.Tensor, c: torch.Tensor, w0: float,
                  gb: torch.Tensor) -> bool:
        """Compiled backward through the linear head into the last hidden layer's ``dz`` (in ``c``) and its bias
        gradient; False when not compiling (the caller then uses GEMMs)."""
        return self._compiled("head_back", _head_back_math, w, dz_out, c, w0, gb)

    def first_back(self, c: torch.Tensor, dh: torch.Tensor, xs: torch.Tensor, w0: float, gw: torch.Tensor,
                   gb: torch.Tensor) -> bool:
        """Compiled first-layer weight and bias gradients from ``cos`` and ``dh`` in one pass; False when not
        compiling."""
        return self._compiled("first_back", _first_back_math, c, dh, xs, w0, gw, gb)

    def hidden(self, w: torch.Tensor, b: torch.Tensor, h: torch.Tensor, w0: float, s_out: torch.Tensor,
               c_out: torch.Tensor) -> None:
        """``sin``/``cos`` of a hidden layer ``w0 (W h + b)``: eager folds bias and ``w0`` into one ``baddbmm``;
        compiled adds bias, scale, sin and cos in one fused pass after a plain ``bmm``."""
        if self.use_compile and not _Kernels.broken:
            torch.bmm(w, h, out=c_out)
            if self._compiled("hidden", _hidden_math, c_out, b, w0, s_out):
                return
        torch.baddbmm(b.unsqueeze(-1), w, h, beta=w0, alpha=w0, out=c_out)
        torch.sin(c_out, out=s_out)
        c_out.cos_()


def want_compile(mode: str | bool, work: float) -> bool:
    """Whether to compile for a fit of ``work`` activation-elements × steps under ``compile`` = auto|on|off."""
    if isinstance(mode, bool):
        return mode
    if mode in ("on", "true", "always"):
        return True
    if mode in ("off", "false", "never"):
        return False
    return work >= COMPILE_MIN_WORK


# --------------------------------------------------------------------------------------------- the fitter

class _Layout:
    """Offsets of each parameter tensor inside one item's row of the flat buffer."""

    def __init__(self, spec: SirenSpec):
        self.shapes = spec.param_shapes()
        self.sizes = [math.prod(s) for s in self.shapes]
        self.offsets = list(np.cumsum([0] + self.sizes[:-1]))
        self.n = int(sum(self.sizes))

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-tensor views ``[B, *shape]`` into a ``[B, n]`` buffer (no copies)."""
        return [flat[:, o:o + n].view(flat.shape[0], *s) for o, n, s in zip(self.offsets, self.sizes, self.shapes)]

    def pack(self, params: Params) -> torch.Tensor:
        """Stacked params → one contiguous ``[B, n]`` buffer."""
        return torch.cat([p.reshape(p.shape[0], -1) for p in params], dim=1).contiguous()

    def unpack(self, flat: torch.Tensor) -> Params:
        """``[B, n]`` buffer → contiguous stacked params."""
        return [v.contiguous() for v in self.views(flat)]


class BatchLoop:
    """Step bookkeeping shared by the batched fitters (SIREN here, NeRF in ``izoo.nerf.fitting``).

    Needs ``settings`` (a ``PhaseSettings``), ``step``, ``rows`` (active items), ``seconds``, the per-item
    trackers ``best_psnr``, ``stall_ref``, ``stall_step``, ``device`` and ``state()`` on the fitter.
    """

    def _charge(self, tick: float) -> float:
        """Share the time since ``tick`` equally among the active items; returns the new tick."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if len(self.rows):
            self.seconds[self.rows] += (now - tick) / len(self.rows)
        return now

    def _update_trackers(self, psnr: torch.Tensor, improved: torch.Tensor, final: bool) -> torch.Tensor:
        """At a check: update best PSNR and stall trackers of the active items; returns which of them stop now."""
        st = self.settings
        rows = self.rows
        self.best_psnr[rows] = torch.where(improved, psnr, self.best_psnr[rows])
        gained = psnr >= self.stall_ref[rows] + st.min_delta
        self.stall_ref[rows] = torch.where(gained, psnr, self.stall_ref[rows])
        self.stall_step[rows] = torch.where(gained, torch.full_like(self.stall_step[rows], self.step),
                                            self.stall_step[rows])
        stop = torch.zeros(len(rows), dtype=torch.bool)
        if final:
            stop[:] = True
        else:
            if st.stop_on_pass:
                stop |= psnr >= st.gate_psnr
            if st.patience is not None:
                stop |= (self.step - self.stall_step[rows]) >= st.patience
        return stop

    def _stop_or_checkpoint(self, tick: float, resumed_at: int, should_stop: Callable[[], bool] | None,
                            on_checkpoint: Callable[[dict[str, Any]], None] | None) -> float:
        """Top of a step: on a stop request save a checkpoint and raise ``FitInterrupted``; else save periodically."""
        st = self.settings
        if should_stop is not None and should_stop():
            if on_checkpoint is not None:
                self._charge(tick)
                on_checkpoint(self.state())
            raise FitInterrupted(f"stopped at step {self.step}/{st.max_steps}")
        if (on_checkpoint is not None and st.checkpoint_every and self.step > resumed_at
                and self.step % st.checkpoint_every == 0):
            tick = self._charge(tick)
            on_checkpoint(self.state())
        return tick


class SirenBatchFit(BatchLoop):
    """One phase of fitting B SIRENs to B images of one size; resumable from ``state()``."""

    def __init__(self, spec: SirenSpec, images01: torch.Tensor, settings: PhaseSettings, init: Params,
                 device: torch.device | str = "cpu", use_compile: bool | str = "auto"):
        if images01.dim() != 4 or images01.shape[1] != spec.out_features:
            raise ValueError(f"images must be [B, {spec.out_features}, H, W], got {tuple(images01.shape)}")
        self.spec, self.settings = spec, settings
        self.device = torch.device(device)
        self.dtype = images01.dtype
        self.layout = _Layout(spec)
        n_items, _, height, width = images01.shape
        self.n_items, self.n_pixels = n_items, height * width
        # feature-major targets [B, 3, P]: normalised (what is fitted) and [0, 1] (what PSNR is measured on)
        t01 = images01.to(self.device).reshape(n_items, spec.out_features, -1)
        self.mean = torch.tensor(siren.IMAGENET_MEAN, device=self.device, dtype=self.dtype).view(1, 3, 1)
        self.std = torch.tensor(siren.IMAGENET_STD, device=self.device, dtype=self.dtype).view(1, 3, 1)
        self.all_t01 = t01.contiguous()
        self.all_tn = ((t01 - self.mean) / self.std).contiguous()
        self.xs = siren.coordinate_grid(height, width, device=self.device).to(self.dtype).t().contiguous()  # [2, P]
        work = float(n_items) * spec.width * self.n_pixels * (spec.depth - 1) * settings.max_steps
        self.kernels = _Kernels(want_compile(use_compile, work))
        self._buffers: dict[str, torch.Tensor] = {}
        flat = self.layout.pack([p.to(self.device, self.dtype) for p in init])
        self._fresh(flat)

    # ----- state
    def _fresh(self, flat: torch.Tensor) -> None:
        n = self.n_items
        self.step = 0
        self.rows = torch.arange(n)                          # batch positions of the active rows
        self.theta = flat.clone()
        self.m = torch.zeros_like(self.theta)
        self.v = torch.zeros_like(self.theta)
        self.best_theta = self.theta.clone() if self.settings.keep_best else None
        self.best_psnr = torch.full((n,), -math.inf, dtype=torch.float64)
        self.stall_ref = torch.full((n,), -math.inf, dtype=torch.float64)
        self.stall_step = torch.zeros(n, dtype=torch.int64)
        self.out_theta = torch.zeros(n, self.layout.n, dtype=self.dtype)   # CPU, finished items
        self.out_psnr = torch.full((n,), float("nan"), dtype=torch.float64)
        self.out_iters = torch.zeros(n, dtype=torch.int64)
        self.psnr_before = torch.full((n,), float("nan"), dtype=torch.float64)
        self.seconds = torch.zeros(n, dtype=torch.float64)
        self.finished = torch.zeros(n, dtype=torch.bool)
        self._select_targets()

    def _select_targets(self) -> None:
        """Targets of the active rows (kept compacted alongside the parameters)."""
        rows = self.rows.to(self.device)
        self.tn, self.t01 = self.all_tn[rows], self.all_t01[rows]

    def state(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit (CPU tensors)."""
        cpu = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
        return {"step": self.step, "rows": cpu(self.rows), "theta": cpu(self.theta), "m": cpu(self.m),
                "v": cpu(self.v), "best_theta": cpu(self.best_theta), "best_psnr": cpu(self.best_psnr),
                "stall_ref": cpu(self.stall_ref), "stall_step": cpu(self.stall_step), "out_theta": cpu(self.out_theta),
                "out_psnr": cpu(self.out_psnr), "out_iters": cpu(self.out_iters), "psnr_before": cpu(self.psnr_before),
                "seconds": cpu(self.seconds), "finished": cpu(self.finished), "n_items": self.n_items,
                "phase": self.settings.phase}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state()`` of an interrupted run of the same batch and phase."""
        if state.get("n_items") != self.n_items or state.get("phase") != self.settings.phase:
            raise ValueError("checkpoint belongs to another batch or phase")
        dev = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        self.step = int(state["step"])
        self.rows = state["rows"].clone()
        self.theta, self.m, self.v = dev(state["theta"]), dev(state["m"]), dev(state["v"])
        self.best_theta = dev(state["best_theta"])
        for key in ("best_psnr", "stall_ref", "stall_step", "out_theta", "out_psnr", "out_iters", "psnr_before",
                    "seconds", "finished"):
            setattr(self, key, state[key].clone())
        self._select_targets()

    # ----- maths
    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A reusable activation buffer (reallocated only when the batch shrinks)."""
        buf = self._buffers.get(name)
        if buf is None or tuple(buf.shape) != shape:
            buf = self._buffers[name] = torch.empty(shape, device=self.device, dtype=self.dtype)
        return buf

    def _forward(self, theta: torch.Tensor) -> tuple[torch.Tensor, list, list]:
        """Outputs ``[A, 3, P]`` (normalised space) plus the sines and cosines of every hidden layer."""
        w0 = self.spec.w0
        views = self.layout.views(theta)
        n_layers = len(views) // 2
        shape = (theta.shape[0], self.spec.width, self.n_pixels)
        sines = [self._buffer(f"s{k}", shape) for k in range(n_layers - 1)]
        cosines = [self._buffer(f"c{k}", shape) for k in range(n_layers - 1)]
        self.kernels.first(views[0], views[1], self.xs, w0, sines[0], cosines[0])
        for layer in range(1, n_layers - 1):
            self.kernels.hidden(views[2 * layer], views[2 * layer + 1], sines[layer - 1], w0, sines[layer],
                                cosines[layer])
        out = torch.baddbmm(views[-1].unsqueeze(-1), views[-2], sines[-1])
        return out, sines, cosines

    def _psnr(self, out: torch.Tensor, t01: torch.Tensor) -> torch.Tensor:
        pred = (out * self.std + self.mean).clamp_(0.0, 1.0)
        mse = (pred - t01).pow_(2).mean(dim=(1, 2))
        return (-10.0 * torch.log10(mse.clamp_min(1e-12))).double().cpu()

    def _gradient(self, out: torch.Tensor, tn: torch.Tensor, sines: list, cosines: list) -> torch.Tensor:
        """Hand-written backward of the per-item mean squared error; returns ``[A, n]`` gradients.

        ``dz`` holds ``cos(a) · dL/ds`` for hidden layers; the factor ``w0`` of ``d a / d z`` is applied to the
        small weight gradients and, through the GEMM's ``alpha``, to the next ``dL/ds`` (no extra pass).
        """
        w0 = self.spec.w0
        grad = self._buffer("grad", tuple(self.theta.shape))
        gviews = self.layout.views(grad)
        views = self.layout.views(self.theta)
        n_layers = len(views) // 2
        zero = torch.zeros((), device=out.device, dtype=out.dtype).expand(1, 1, 1)
        dz = (out - tn).mul_(2.0 / (out.shape[1] * out.shape[2]))       # d loss / d out (linear head)
        scale = 1.0
        layer = n_layers - 1
        gviews[2 * layer].copy_(torch.bmm(dz, sines[layer - 1].transpose(1, 2)))
        gviews[2 * layer + 1].copy_(dz.sum(dim=-1))
        if n_layers > 2 and self.kernels.head_back(views[2 * layer], dz, cosines[layer - 1], w0,
                                                   gviews[2 * layer - 1]):
            # the head's backward and the next bias gradient are done; continue from the last hidden layer
            dz, scale, layer, bias_done = cosines[layer - 1], w0, layer - 1, True
        else:
            bias_done = False
        while layer > 0:
            if layer < n_layers - 1:
                gviews[2 * layer].copy_(torch.bmm(dz, sines[layer - 1].transpose(1, 2)).mul_(scale))
                if not bias_done:
                    gviews[2 * layer + 1].copy_(dz.sum(dim=-1).mul_(scale))
            bias_done = False
            dh = self._buffer("dh", tuple(cosines[layer - 1].shape))
            torch.baddbmm(zero, views[2 * layer].transpose(1, 2), dz, beta=0.0, alpha=scale, out=dh)
            if layer == 1 and self.kernels.first_back(cosines[0], dh, self.xs, w0, gviews[0], gviews[1]):
                return grad
            dz = cosines[layer - 1].mul_(dh)                              # reuses the cosine's storage
            scale = w0
            layer -= 1
        gviews[0].copy_(torch.matmul(dz, self.xs.t()).mul_(w0))
        gviews[1].copy_(dz.sum(dim=-1).mul_(w0))
        return grad

    def _adam(self, grad: torch.Tensor, lr: float) -> None:
        """One Adam step over the flat buffer (same arithmetic as ``torch.optim.Adam``, single-tensor path)."""
        beta1, beta2 = ADAM_BETAS
        t = self.step + 1
        self.m.lerp_(grad, 1 - beta1)
        self.v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1 = 1 - beta1 ** t
        bias2_sqrt = math.sqrt(1 - beta2 ** t)
        denom = (self.v.sqrt() / bias2_sqrt).add_(ADAM_EPS)
        self.theta.addcdiv_(self.m, denom, value=-lr / bias1)

    # ----- bookkeeping at checks
    def _check(self, psnr: torch.Tensor, final: bool) -> torch.Tensor | None:
        """Update trackers at a check; finish items that stop and drop them; returns the kept local rows (or None)."""
        st = self.settings
        rows = self.rows
        if self.step == 0:
            self.psnr_before[rows] = psnr
        improved = psnr > self.best_psnr[rows]
        if st.keep_best and bool(improved.any()):
            idx = improved.nonzero().squeeze(1).to(self.theta.device)
            self.best_theta[idx] = self.theta[idx]
        stop = self._update_trackers(psnr, improved, final)
        if not bool(stop.any()):
            return None
        local = stop.nonzero().squeeze(1)
        done = rows[local]
        source = self.best_theta if st.keep_best else self.theta
        self.out_theta[done] = source[local.to(source.device)].to("cpu", self.dtype)
        self.out_psnr[done] = self.best_psnr[done] if st.keep_best else psnr[local]
        self.out_iters[done] = self.step
        self.finished[done] = True
        keep = (~stop).nonzero().squeeze(1)
        kd = keep.to(self.theta.device)
        self.rows = rows[keep]
        self.theta, self.m, self.v = self.theta[kd], self.m[kd], self.v[kd]
        self.tn, self.t01 = self.tn[kd], self.t01[kd]
        if self.best_theta is not None:
            self.best_theta = self.best_theta[kd]
        return kd

    # ----- the loop
    def run(self, should_stop: Callable[[], bool] | None = None,
            on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
            progress: ProgressFn | None = None) -> FitResult:
        """Train until every item has finished; a stop request checkpoints and raises ``FitInterrupted``."""
        st = self.settings
        tick = time.perf_counter()
        resumed_at = self.step
        while len(self.rows) > 0:
            tick = self._stop_or_checkpoint(tick, resumed_at, should_stop, on_checkpoint)
            final = self.step >= st.max_steps
            is_check = final or self.step % st.check_every == 0
            out, sines, cosines = self._forward(self.theta)
            if is_check:
                psnr = self._psnr(out, self.t01)
                tick = self._charge(tick)
                kept = self._check(psnr, final)
                if progress is not None and len(psnr):
                    progress(self.step, st.max_steps, len(self.rows), float(psnr.mean()))
                if len(self.rows) == 0:
                    break
                if kept is not None:  # some items left the batch: drop their activations too
                    out = out[kept]
                    sines, cosines = [a[kept] for a in sines], [a[kept] for a in cosines]
            grad = self._gradient(out, self.tn, sines, cosines)
            del out, sines, cosines
            self._adam(grad, st.lr_at(self.step))
            self.step += 1
        self._charge(tick)
        gate = st.gate_psnr
        psnr = self.out_psnr.float().numpy()
        return FitResult(params=[p.clone() for p in self.layout.unpack(self.out_theta)],
                         psnr_before=self.psnr_before.float().numpy(), psnr=psnr,
                         iterations=self.out_iters.numpy().astype(np.int64),
                         seconds=self.seconds.float().numpy(), passed=psnr >= gate)



def fit_images(images01: torch.Tensor, spec: SirenSpec, settings: PhaseSettings, init: Params | None = None,
               seeds: Sequence[int] | None = None, device: torch.device | str = "cpu",
               use_compile: bool | str = "auto", resume_state: dict[str, Any] | None = None,
               should_stop: Callable[[], bool] | None = None,
               on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
               progress: ProgressFn | None = None) -> FitResult:
    """Fit one phase for B images ``[B, 3, H, W]`` in [0, 1] from ``init`` (or SIREN inits from ``seeds``)."""
    if init is None:
        init = siren.init_params(spec, seeds if seeds is not None else [42] * images01.shape[0])
    fitter = SirenBatchFit(spec, images01, settings, init, device=device, use_compile=use_compile)
    if resume_state is not None:
        fitter.load_state(resume_state)
    return fitter.run(should_stop=should_stop, on_checkpoint=on_checkpoint, progress=progress)


@dataclass
class PhasedResult:
    """Per-item outcome of the three phases run in memory (``fit_all_phases``)."""

    params: Params
    psnr: np.ndarray
    iterations: np.ndarray   # summed over phases
    seconds: np.ndarray
    phase: np.ndarray        # last phase that trained the item
    passed: np.ndarray


def fit_all_phases(images01: torch.Tensor, spec: SirenSpec, fit_cfg: dict | None = None,
                   seeds: Sequence[int] | None = None, device: torch.device | str = "cpu",
                   use_compile: bool | str = "auto") -> PhasedResult:
    """basic on every item, extended on items below the gate, until_threshold on items still below it."""
    from izoo.fitting.phases import PHASES, phase_settings

    n = images01.shape[0]
    res = fit_images(images01, spec, phase_settings(fit_cfg, "basic"), seeds=seeds, device=device,
                     use_compile=use_compile)
    params = [p.clone() for p in res.params]
    psnr, iters, secs = res.psnr.copy(), res.iterations.copy(), res.seconds.copy()
    phase = np.array(["basic"] * n, dtype=object)
    passed = res.passed.copy()
    for name in PHASES[1:]:
        failing = np.flatnonzero(~passed)
        if len(failing) == 0:
            break
        sel = torch.as_tensor(failing)
        sub = fit_images(images01[sel], spec, phase_settings(fit_cfg, name), init=[p[sel] for p in params],
                         device=device, use_compile=use_compile)
        for k, p in enumerate(sub.params):
            params[k][sel] = p
        psnr[failing], passed[failing] = sub.psnr, sub.passed
        iters[failing] += sub.iterations
        secs[failing] += sub.seconds
        phase[failing] = name
    return PhasedResult(params=params, psnr=psnr, iterations=iters, seconds=secs, phase=phase.astype(str),
                        passed=passed)
