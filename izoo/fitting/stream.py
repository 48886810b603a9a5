"""Continuous batching: a job's items stream through a fixed number of slots, each at its own step.

``StreamFit`` is the model-agnostic part of the batched fitters (SIREN in ``izoo.siren.engine``, NeRF in
``izoo.nerf.fitting``). It keeps at most ``slots`` items training at once; an item leaves its slot at the first
check at which the phase lets it stop (gate passed after ``min_steps``, stalled, or its step budget spent), and
the next unstarted item of the job takes the slot at step 0. Every slot carries its own step counter, so its
learning-rate schedule position and Adam bias correction are its own: an item's trajectory is the same whether it
started with the job or joined later (the batch loss is a sum of per-item losses and Adam is element-wise).

Parameters and Adam moments of the active items live in flat ``[A, n_params]`` buffers on the device. A subclass
supplies the family's maths in ``_train(check)``: one training step of every active item, returning the PSNR of
the *pre-step* weights of the items flagged in ``check``; and ``_lr_at(step)``, its schedule (tabulated once per phase).

Finished items are handed out in groups (``on_group``) so that a job never holds all of them; a checkpoint
(``state()``) holds only the in-flight slots, the queue position and how many groups were handed out. One is
taken every ``checkpoint_every`` steps, on a stop request, and after each group (so finished groups are durable),
except where checkpoints are slow (many large slots): then after a group only if that keeps them under a tenth of
the run time. A run
resumed from a checkpoint replays the same slot composition, so it gives bitwise the same weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from izoo.errors import IzooError
from izoo.fitting.phases import PhaseSettings

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

#: a group is followed by a checkpoint, unless checkpoints are slow (the last took over SLOW_CHECKPOINT_S seconds:
#: many large slots) and the last was taken less than CHECKPOINT_COST_RATIO times its cost ago
SLOW_CHECKPOINT_S = 0.5
CHECKPOINT_COST_RATIO = 10.0
#: ``progress(finished, total, n_active, mean PSNR of the items checked at this step)``
ProgressFn = Callable[[int, int, int, float], None]


class FitInterrupted(Exception):
    """A stop was requested (signal or deadline); the in-flight state was handed to the checkpoint callback."""


@dataclass
class FitResult:
    """Per-item outcome of one phase for a set of items (arrays in ``positions`` order, tensors on the CPU).

    A stream (``StreamFit.run``) returns ``params`` in its family's form and ``positions`` in the stream's job;
    a family's ``fit_batch`` (``izoo.fitting.batch``) returns ``params`` by name (numpy) and ``positions`` in its
    sample list.
    """

    params: Any                # stacked over items: SIREN list [w0, b0, ...], NeRF dict, or name -> ndarray
    psnr_before: np.ndarray    # float32, PSNR of the initial weights
    psnr: np.ndarray           # float32, PSNR of the returned weights
    iterations: np.ndarray     # int64, steps this item took in this phase
    seconds: np.ndarray        # float32, this item's share of the wall-clock time of the steps it was active in
    passed: np.ndarray         # bool, psnr >= gate
    positions: np.ndarray | None = None   # int64, the items' positions in the job

    def __len__(self) -> int:
        return int(self.psnr.shape[0])


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA and CPU allocator out-of-memory errors."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class FlatLayout:
    """Offsets of each parameter tensor inside one item's row of a flat ``[B, n]`` buffer."""

    def __init__(self, shapes: Sequence[tuple[int, ...]]):
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        # plain ints: numpy integers would make torch.compile treat the slicing as data-dependent (graph break)
        self.offsets = [int(o) for o in np.cumsum([0] + self.sizes[:-1])]
        self.n = int(sum(self.sizes))

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-tensor views ``[B, *shape]`` into a ``[B, n]`` buffer (no copies)."""
        return [flat[:, o:o + n].view(flat.shape[0], *s) for o, n, s in zip(self.offsets, self.sizes, self.shapes)]

    def pack(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stacked params → one contiguous ``[B, n]`` buffer."""
        return torch.cat([p.reshape(p.shape[0], -1) for p in params], dim=1).contiguous()

    def unpack(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``[B, n]`` buffer → contiguous stacked params."""
        return [v.contiguous() for v in self.views(flat)]


_ROW_TRACKERS = ("pos", "steps", "best_psnr", "stall_ref", "stall_step", "psnr_before", "seconds")
_PENDING = ("pos", "flat", "psnr_before", "psnr", "iterations", "seconds")


class StreamFit:
    """One phase of fitting ``n_items`` items through at most ``slots`` slots; resumable from ``state()``.

    Subclasses set ``family`` and implement ``_train`` and ``_lr_at`` (and may override ``_rows_changed``, called
    whenever the set of active items changed, and ``_params_out``, the family form of finished parameters).
    """

    family = "stream"
    #: checks cost nothing extra (SIREN: the step computes the outputs anyway); False (NeRF: a held-out render)
    #: limits checks to the steps at which the phase can stop an item
    checks_are_cheap = True

    def __init__(self, init_flat: torch.Tensor, settings: PhaseSettings, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, slots: int | None = None):
        self.settings = settings
        self.device = torch.device(device)
        self.dtype = dtype
        self.init_flat = init_flat.detach().to("cpu", dtype)      # [N, n] every item's starting point
        self.n_items, self.n_params = int(init_flat.shape[0]), int(init_flat.shape[1])
        self.slots = max(1, int(slots or self.n_items or 1))
        self.step_count = 0               # stream steps taken (all active items step together)
        self.next_pos = 0                 # first job position not started yet
        self.requeue: list[int] = []      # positions evicted by an out-of-memory halving; they start again first
        self.n_groups = 0                 # groups handed to ``on_group``
        self.n_finished = 0
        empty = torch.zeros(0, self.n_params, dtype=dtype, device=self.device)
        self.theta, self.m, self.v = empty, empty.clone(), empty.clone()
        self.best_theta = empty.clone() if settings.keep_best else None
        self.pos = torch.zeros(0, dtype=torch.int64)
        self.steps = torch.zeros(0, dtype=torch.int64)
        self.best_psnr = torch.zeros(0, dtype=torch.float64)
        self.stall_ref = torch.zeros(0, dtype=torch.float64)
        self.stall_step = torch.zeros(0, dtype=torch.int64)
        self.psnr_before = torch.zeros(0, dtype=torch.float64)
        self.seconds = torch.zeros(0, dtype=torch.float64)
        self.pending: dict[str, list[torch.Tensor]] = {k: [] for k in _PENDING}
        self._lr_table: np.ndarray | None = None

    # ----- hooks for the family
    def _train(self, check: torch.Tensor) -> torch.Tensor:
        """One step of every active item; PSNR (float64, CPU) of the pre-step weights of the ``check`` rows."""
        raise NotImplementedError  # abstract: SirenBatchFit and NerfBatchFit implement it

    def _lr_at(self, step: int) -> float:
        """Learning rate of the step an item takes after ``step`` steps (the family's schedule)."""
        raise NotImplementedError  # abstract: each family has its schedule

    def _rows_changed(self) -> None:
        """The active items changed (joined, finished or evicted): drop caches keyed on them."""

    def _params_out(self, flat: torch.Tensor) -> Any:
        """Finished parameters ``[k, n]`` (CPU) in the family's form."""
        return flat

    # ----- shared maths
    def adam_hyper(self) -> torch.Tensor:
        """Per-item ``[lr / (1 - β1^t), sqrt(1 - β2^t)]`` ``[A, 2]`` of the next step (t = own step + 1)."""
        if self._lr_table is None:   # once per phase: a per-step Python loop over thousands of slots is slow
            self._lr_table = np.array([self._lr_at(k) for k in range(self.settings.max_steps + 1)])
        steps = self.steps.numpy()
        t = steps.astype(np.float64) + 1.0
        lr = self._lr_table[np.minimum(steps, self.settings.max_steps)]
        hyper = np.stack([lr / (1.0 - ADAM_BETAS[0] ** t), np.sqrt(1.0 - ADAM_BETAS[1] ** t)], axis=1)
        return torch.from_numpy(hyper).to(self.device, self.dtype)

    # ----- queue
    def _refill(self) -> None:
        free = self.slots - len(self.pos)
        if free <= 0:
            return
        take = self.requeue[:free]
        self.requeue = self.requeue[free:]
        fresh = min(free - len(take), self.n_items - self.next_pos)
        take += list(range(self.next_pos, self.next_pos + fresh))
        self.next_pos += fresh
        if not take:
            return
        new = torch.as_tensor(take, dtype=torch.int64)
        k = len(take)
        theta = self.init_flat[new].to(self.device, self.dtype)
        self.theta = torch.cat([self.theta, theta])
        zeros = torch.zeros_like(theta)
        self.m, self.v = torch.cat([self.m, zeros]), torch.cat([self.v, zeros])
        if self.best_theta is not None:
            self.best_theta = torch.cat([self.best_theta, theta])
        self.pos = torch.cat([self.pos, new])
        self.steps = torch.cat([self.steps, torch.zeros(k, dtype=torch.int64)])
        self.best_psnr = torch.cat([self.best_psnr, torch.full((k,), -math.inf, dtype=torch.float64)])
        self.stall_ref = torch.cat([self.stall_ref, torch.full((k,), -math.inf, dtype=torch.float64)])
        self.stall_step = torch.cat([self.stall_step, torch.zeros(k, dtype=torch.int64)])
        self.psnr_before = torch.cat([self.psnr_before, torch.full((k,), math.nan, dtype=torch.float64)])
        self.seconds = torch.cat([self.seconds, torch.zeros(k, dtype=torch.float64)])
        self._rows_changed()

    def _keep(self, keep: torch.Tensor) -> None:
        """Keep only the active rows where ``keep`` (CPU bool ``[A]``) is true."""
        kd = keep.to(self.device)
        self.theta, self.m, self.v = self.theta[kd], self.m[kd], self.v[kd]
        if self.best_theta is not None:
            self.best_theta = self.best_theta[kd]
        for name in _ROW_TRACKERS:
            setattr(self, name, getattr(self, name)[keep])
        self._rows_changed()

    def _evict_half(self, reason: str, emit: Callable[[str], None] | None) -> None:
        """Out of memory: halve the slots; the newest half of the active items starts again later."""
        n = len(self.pos)
        if n <= 1:
            raise IzooError(f"one item does not fit in {self.device} memory ({reason})", None,
                            "use a device with more memory or a smaller model")
        self.slots = max(1, n // 2)
        keep = torch.zeros(n, dtype=torch.bool)
        keep[: self.slots] = True
        self.requeue = self.pos[~keep].tolist() + self.requeue
        self._keep(keep)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if emit is not None:
            emit(f"warning: out of memory fitting {n} items at once on {self.device}; "
                 f"halving the batch to {self.slots} items and going on")

    # ----- one stream step
    def _check_mask(self) -> torch.Tensor:
        st = self.settings
        final = self.steps >= st.max_steps
        regular = self.steps % st.check_every == 0
        if not self.checks_are_cheap:
            needs_checks = st.stop_on_pass or st.patience is not None or st.keep_best
            regular = (self.steps == 0) | (regular if needs_checks else torch.zeros_like(regular))
        return final | regular

    def _step(self, emit: Callable[[str], None] | None) -> tuple[int, float]:
        """One training step of every active item, then the checks; returns (items checked, their mean PSNR)."""
        st = self.settings
        check = self._check_mask()
        cidx = check.nonzero().squeeze(1)
        before = self.theta[cidx.to(self.device)] if len(cidx) else None     # indexing copies: pre-step weights
        try:
            psnr = self._train(check)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            del before
            self._evict_half(reason, emit)
            return 0, math.nan
        if not len(cidx):
            self.steps += 1
            return 0, math.nan
        steps = self.steps[cidx]
        first = steps == 0
        if bool(first.any()):
            self.psnr_before[cidx[first]] = psnr[first]
        improved = psnr > self.best_psnr[cidx]
        self.best_psnr[cidx] = torch.where(improved, psnr, self.best_psnr[cidx])
        if st.keep_best and bool(improved.any()):
            self.best_theta[cidx[improved].to(self.device)] = before[improved.to(self.device)]
        gained = psnr >= self.stall_ref[cidx] + st.min_delta
        self.stall_ref[cidx] = torch.where(gained, psnr, self.stall_ref[cidx])
        self.stall_step[cidx] = torch.where(gained, steps, self.stall_step[cidx])
        stop = steps >= st.max_steps
        if st.stop_on_pass:
            stop |= (psnr >= st.gate_psnr) & (steps >= st.min_steps)
        if st.patience is not None:
            stop |= (steps - self.stall_step[cidx]) >= st.patience
        if bool(stop.any()):
            rows = cidx[stop]
            rd = rows.to(self.device)
            source = self.best_theta[rd] if st.keep_best else before[stop.to(self.device)]
            pend = self.pending
            pend["pos"].append(self.pos[rows])
            pend["flat"].append(source.to("cpu", self.dtype))
            pend["psnr_before"].append(self.psnr_before[rows])
            pend["psnr"].append(self.best_psnr[rows] if st.keep_best else psnr[stop])
            pend["iterations"].append(steps[stop])
            pend["seconds"].append(self.seconds[rows])
            self.n_finished += len(rows)
            keep = torch.ones(len(self.pos), dtype=torch.bool)
            keep[rows] = False
            self.steps += 1
            self._keep(keep)
        else:
            self.steps += 1
        return len(cidx), float(psnr.mean())

    def advance(self, n_steps: int) -> None:
        """``n_steps`` training steps of the slots' items with no checks and no stopping (benchmarks time this)."""
        self._refill()
        no_check = torch.zeros(len(self.pos), dtype=torch.bool)
        for _ in range(n_steps):
            self._train(no_check)
            self.steps += 1

    # ----- results
    def _take_pending(self) -> FitResult | None:
        """The finished items not handed out yet, in job order (and forget them)."""
        if not self.pending["pos"]:
            return None
        cat = {k: torch.cat(v) for k, v in self.pending.items()}
        self.pending = {k: [] for k in _PENDING}
        order = torch.argsort(cat["pos"])
        cat = {k: v[order] for k, v in cat.items()}
        psnr = cat["psnr"].float().numpy()
        return FitResult(params=self._params_out(cat["flat"]), psnr_before=cat["psnr_before"].float().numpy(),
                         psnr=psnr, iterations=cat["iterations"].numpy().astype(np.int64),
                         seconds=cat["seconds"].float().numpy(), passed=psnr >= self.settings.gate_psnr,
                         positions=cat["pos"].numpy().astype(np.int64))

    def _charge(self, tick: float) -> float:
        """Share the time since ``tick`` equally among the active items; returns the new tick."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if len(self.pos):
            self.seconds += (now - tick) / len(self.pos)
        return now

    # ----- the loop
    def run(self, should_stop: Callable[[], bool] | None = None,
            on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
            progress: ProgressFn | None = None, on_group: Callable[[FitResult], None] | None = None,
            group_size: int | None = None, emit: Callable[[str], None] | None = None) -> FitResult | None:
        """Stream every item through the slots until all have finished.

        With ``on_group``, finished items are handed out in groups of at least ``group_size`` (and before every
        checkpoint) and ``None`` is returned; without, all of them are returned at the end. A stop request hands
        out the finished items, checkpoints and raises ``FitInterrupted``.
        """
        st = self.settings
        group_size = max(1, int(group_size or self.slots))
        tick = time.perf_counter()
        resumed_at = self.step_count

        def flush() -> None:
            if on_group is not None:
                group = self._take_pending()
                if group is not None:
                    self.n_groups += 1
                    on_group(group)

        last_checkpoint = {"at": time.perf_counter(), "cost": 0.0}

        def checkpoint() -> None:
            started = time.perf_counter()
            on_checkpoint(self.state())
            last_checkpoint.update(at=time.perf_counter(), cost=time.perf_counter() - started)

        self._refill()
        while len(self.pos):
            if should_stop is not None and should_stop():
                tick = self._charge(tick)
                if on_checkpoint is not None:
                    flush()
                    checkpoint()
                raise FitInterrupted(f"stopped after {self.step_count} steps ({self.n_finished}/{self.n_items} "
                                     "items finished)")
            if (on_checkpoint is not None and st.checkpoint_every and self.step_count > resumed_at
                    and self.step_count % st.checkpoint_every == 0):
                tick = self._charge(tick)
                flush()
                checkpoint()
            n_checked, mean_psnr = self._step(emit)
            self.step_count += 1
            if n_checked:
                tick = self._charge(tick)
                if progress is not None:
                    progress(self.n_finished, self.n_items, len(self.pos), mean_psnr)
            if on_group is not None and sum(len(p) for p in self.pending["pos"]) >= group_size:
                flush()
                # a checkpoint right after a group makes the group durable (a resume reuses it instead of fitting
                # its items again); slow checkpoints are rate-limited to a tenth of the time
                cost = last_checkpoint["cost"]
                if on_checkpoint is not None and len(self.pos) and (
                        cost < SLOW_CHECKPOINT_S
                        or time.perf_counter() - last_checkpoint["at"] >= CHECKPOINT_COST_RATIO * cost):
                    checkpoint()
            self._refill()
        self._charge(tick)
        if on_group is not None:
            flush()
            return None
        return self._take_pending()

    # ----- checkpoints
    def state(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit (CPU tensors and plain values)."""
        cpu = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
        pending = {k: torch.cat(v) if v else None for k, v in self.pending.items()}
        return {"family": self.family, "phase": self.settings.phase, "n_items": self.n_items,
                "n_params": self.n_params, "slots": self.slots, "step_count": self.step_count,
                "next_pos": self.next_pos, "requeue": list(self.requeue), "n_groups": self.n_groups,
                "n_finished": self.n_finished, "theta": cpu(self.theta), "m": cpu(self.m), "v": cpu(self.v),
                "best_theta": cpu(self.best_theta), **{k: cpu(getattr(self, k)) for k in _ROW_TRACKERS},
                "pending": pending}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state()`` of an interrupted run of the same items and phase."""
        if (state.get("family") != self.family or state.get("n_items") != self.n_items
                or state.get("phase") != self.settings.phase or state.get("n_params") != self.n_params):
            raise ValueError("checkpoint belongs to another job, phase or model family")
        dev = lambda t: None if t is None else t.to(self.device, self.dtype)  # noqa: E731
        for key in ("slots", "step_count", "next_pos", "n_groups", "n_finished"):
            setattr(self, key, int(state[key]))
        self.requeue = [int(p) for p in state["requeue"]]
        self.theta, self.m, self.v = dev(state["theta"]), dev(state["m"]), dev(state["v"])
        self.best_theta = dev(state["best_theta"])
        for key in _ROW_TRACKERS:
            setattr(self, key, state[key].clone())
        self.pending = {k: [] if v is None else [v.clone()] for k, v in state["pending"].items()}
        self._rows_changed()
