"""Shared pytest wiring. Only the SLURM harness lives here (issue #6); test modules own their fixtures."""

from __future__ import annotations

from slurm_cluster import slurm_cluster  # noqa: F401  (session fixture: real single-node SLURM)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print why SLURM tests were skipped, even under ``pytest -q`` (skips must never be silent)."""
    reasons = set()
    for report in terminalreporter.stats.get("skipped", []):
        if "slurm" in report.keywords and isinstance(report.longrepr, tuple):
            reasons.add(report.longrepr[2].removeprefix("Skipped: "))
    for reason in sorted(reasons):
        terminalreporter.write_line(f"SLURM tests SKIPPED: {reason}", yellow=True, bold=True)
