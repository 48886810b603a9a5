"""Log lines of the fitting jobs: ``izoo-fit: ...`` on stderr, one per event, flushed (tests parse them)."""

from __future__ import annotations

import sys
import time

PREFIX = "izoo-fit:"


def emit(message: str) -> None:
    """Print one ``izoo-fit:`` line on stderr and flush it (SLURM logs show it at once)."""
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


class ProgressMeter:
    """Items done, items/s and mean PSNR so far over a job; in-batch step lines at most every ``interval`` s."""

    def __init__(self, total: int, interval: float = 30.0):
        self.total = total
        self.interval = interval
        self.start = time.perf_counter()
        self.done = 0
        self.fitted = 0            # items fitted by this process (reused ones are not counted in items/s)
        self.psnr_sum = 0.0
        self.passed = 0
        self._last_step_line = self.start
        self.batch_label = ""

    def add(self, psnrs: list[float] | tuple[float, ...], passed: int, fitted: bool) -> None:
        """Count a finished group of items and print the progress line."""
        self.done += len(psnrs)
        self.fitted += len(psnrs) if fitted else 0
        self.psnr_sum += float(sum(psnrs))
        self.passed += int(passed)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        mean = self.psnr_sum / max(self.done, 1)
        emit(f"progress {self.done}/{self.total} items, {self.fitted / elapsed:.2f} items/s, "
             f"mean PSNR {mean:.2f} dB, passed {self.passed}/{self.done}")

    def step(self, finished: int, total: int, n_active: int, mean_psnr: float) -> None:
        """In-job progress from the fitter's checks (throttled)."""
        now = time.perf_counter()
        if now - self._last_step_line >= self.interval:
            self._last_step_line = now
            emit(f"{self.batch_label}: {finished}/{total} finished, {n_active} items active, "
                 f"mean PSNR at the last check {mean_psnr:.2f} dB")
