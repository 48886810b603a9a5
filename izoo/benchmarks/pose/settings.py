"""Pose benchmark settings and its tokenizer names (the paper's Table 5 rows)."""

from __future__ import annotations

from dataclasses import dataclass

from izoo.config import schema_names
from izoo.errors import IzooError
from izoo.jsonargs import settings_from_json

#: 3D tokenizers of the pose benchmark, in the row order of the paper's Table 5
POSE_TOKENIZERS = schema_names("pose_tokenizer")
#: their method names in Table 5 (the paper's "Ours" is the uniform tokenizer)
DISPLAY_NAMES = {"uniform": "Ours", "lc": "Ours+LC", "lp": "Ours+LP", "lp_reg": "Ours+LP+reg"}


@dataclass
class PoseSettings:
    """Pose benchmark settings; defaults follow the paper (supplementary §3) where it gives them."""

    tokenizer: str = "uniform"
    grid_resolution: int = 32
    volume_size: int = 4
    grid_bound: float = 1.5
    image_size: int = 128
    image_patch: int = 16
    dim: int = 192
    heads: int = 3
    volume_depth: int = 12
    fusion_depth: int = 4
    mlp_ratio: float = 4.0
    epochs: int = 100
    scenes_per_batch: int = 8
    views_per_scene: int = 24
    bank_views: int = 96        # rendered training views per training scene (a fixed bank, rendered once, uint8)
    eval_views: int = 8         # evaluation views per scene (seen and unseen)
    lr: float = 1e-4
    lr_pretrained: float = 1e-5
    tokenizer_lr: float = 1e-4
    weight_decay: float = 0.05
    rotation_weight: float = 1.0
    translation_weight: float = 1.0
    reg_weight: float = 1.0
    # how the regressor sees colour (the paper does not say): "ink" = 1 − RGB for views (white background → 0)
    # and (1 − RGB) · occupancy for volume points; off = raw RGB and occupancy. At demo scale ink leaves the
    # constant-pose plateau within a few hundred steps where raw inputs do not (benchmarks/RESULTS.md)
    ink: bool = True
    pretrain: bool = False
    mae_epochs: int = 100
    mae_mask_ratio: float = 0.8
    mae_decoder_depth: int = 8
    mae_lr: float = 1.5e-4
    refine: bool = False
    refine_steps: int = 300
    refine_lr: float = 0.01
    refine_rays: int = 1024
    refine_max_views: int = 64  # per split; refinement renders rays for every step, so it is capped
    render_samples: int = 64
    near: float = 2.0
    far: float = 6.0
    use_archive_rendering: bool = True    # take near/far from the archive's ``rendering`` attribute when present
    camera_radius: float = 4.0            # used when the archive stores no poses
    elevation_deg: tuple = (0.0, 65.0)     # used when the archive stores no poses
    unseen_fraction: float = 0.1
    chunk_rays: int = 8192
    log_every: int = 10
    device: str = "auto"

    @classmethod
    def from_json(cls, text_or_path: str | None) -> "PoseSettings":
        """Settings from a JSON string or file (unknown keys are an error naming them)."""
        return settings_from_json(cls, text_or_path, "pose")

    def validate(self) -> None:
        """Raise a one-line error for inconsistent sizes."""
        if self.tokenizer not in POSE_TOKENIZERS:
            raise IzooError(f"unknown pose tokenizer {self.tokenizer!r}", None, f"use one of {POSE_TOKENIZERS}")
        if self.grid_resolution % self.volume_size or self.image_size % self.image_patch:
            raise IzooError(f"grid {self.grid_resolution} / volume {self.volume_size} or image {self.image_size} / "
                            f"patch {self.image_patch} do not divide", None, "choose sizes that divide evenly")
