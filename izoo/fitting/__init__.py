"""Batched INR fitting with three quality-control phases, resumable per shard (see docs/DESIGN.md)."""

from izoo.fitting.engine import FitInterrupted, FitResult, fit_all_phases, fit_images, resolve_device
from izoo.fitting.families import BatchCheckpoint, BatchFit, get_family, register_family
from izoo.fitting.phases import PhaseSettings, fit_config, phase_settings
from izoo.fitting.shard import ShardOutput, StopControl, fit_shard

__all__ = ["FitInterrupted", "FitResult", "fit_all_phases", "fit_images", "resolve_device", "BatchCheckpoint",
           "BatchFit", "get_family", "register_family", "PhaseSettings", "fit_config", "phase_settings",
           "ShardOutput", "StopControl", "fit_shard"]
