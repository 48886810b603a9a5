"""Shared pytest wiring. Only the SLURM harness lives here (issue #6); test modules own their fixtures."""

from __future__ import annotations

import pytest
import torch

from slurm_cluster import slurm_cluster  # noqa: F401  (session fixture: real single-node SLURM)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests use tiny tensors on a small shared machine: extra intra-op threads only add synchronisation."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print why SLURM tests were skipped, even under ``pytest -q`` (skips must never be silent)."""
    reasons = set()
    for report in terminalreporter.stats.get("skipped", []):
        if "slurm" in report.keywords and isinstance(report.longrepr, tuple):
            reasons.add(report.longrepr[2].removeprefix("Skipped: "))
    for reason in sorted(reasons):
        terminalreporter.write_line(f"SLURM tests SKIPPED: {reason}", yellow=True, bold=True)
