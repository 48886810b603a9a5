"""OmniObject3D-INR pose regression: given an archived NeRF and a view of it, regress the 6-DoF camera pose.

Model (the paper's Fig. 4): the NeRF is queried on a 32³ grid (RGB + density) by a 3D tokenizer (uniform volumes,
LC or LP, as the 2D tokenizers), each ``4³`` volume becomes one token by a 3D convolution (kernel = stride = 4 →
512 tokens), a ViT volume encoder (12 layers, 3 heads, 192; MAE-pretrainable) encodes them, the view becomes 2D
patch tokens, and a fusion transformer over ``[pose token, volume tokens, image tokens]`` feeds a head that outputs
the rotation in the continuous 6D representation (Zhou et al. 2019) and the translation of the world-to-camera
transform (where the object's centre sits in the camera frame). That translation is nearly constant for look-at
cameras, so the camera centre ``c = −R t`` follows the predicted rotation and stays at the right distance: a
regressed centre instead collapses towards the mean of the cameras (the object's inside) when views are ambiguous,
where a frozen-NeRF refinement gets no gradient.

Data: each training pair is (scene NeRF, a view rendered from that NeRF at a sampled pose, the pose). Poses follow
the dataset's cameras: look-at-origin cameras at the radius and within the elevation range of the poses stored with
the scene (``extras``), or the settings' defaults when the archive stores none. Split (documented in the results):
kept scenes are split per class into *seen* (training) scenes and *unseen* (held-out) scenes, ``unseen_fraction``
of each class with at least 2 scenes, chosen by the seed; *seen* evaluation = new poses (a different random stream,
or the scene's stored held-out poses) of training scenes, *unseen* evaluation = the same for held-out scenes.

Metrics: translation error = L2 distance of camera centres (scene units × 100, "cm" when a unit is a metre;
``te_cam`` = the same for the world-to-camera translation),
rotation error = geodesic angle of ``R_predᵀ R_gt`` in degrees, RE@5/15/30 = % of views under each threshold;
optionally after iNeRF-style refinement (``izoo.benchmarks.pose_refine``). Every result also carries a
``reference``: the errors of one constant pose (chosen on the training poses, ``constant_pose``) predicted for
every evaluation view, which is what a regressor that learned nothing scores.

Variants (the paper's Table 5 columns, ``izoo.benchmarks.variants``): ``plain``, ``pretrain`` (MAE pre-trained
volume encoder, "+Pre"), and each refined ("+Ref"); the table gives every variant its own row.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from izoo.archive.reader import InrArchive, open_archive
from izoo.benchmarks.pose_refine import RefineSettings, refine_pose
from izoo.benchmarks.engine import count_params, seed_everything, train_step
from izoo.benchmarks.results import read_results, write_result
from izoo.benchmarks.tables import format_mean_std, mean_std, seed_references, write_table
from izoo.benchmarks.tokenizers import non_close_penalty
from izoo.devices import resolve_device
from izoo.errors import IzooError
from izoo.jsonargs import settings_from_json
from izoo.nerf.model import NerfSpec, query
from izoo.nerf.render import render_views
from izoo.nerf.synthetic import look_at_pose

log = logging.getLogger(__name__)

POSE_TOKENIZERS = ("uniform", "lc", "lp", "lp_reg")
DISPLAY_NAMES = {"uniform": "Ours", "lc": "Ours+LC", "lp": "Ours+LP", "lp_reg": "Ours+LP+reg"}
RE_THRESHOLDS = (5.0, 15.0, 30.0)
#: Blender/NeRF-synthetic horizontal field of view (camera_angle_x), used when an archive stores no focal length
BLENDER_FOV_X = 0.6911112070083618


# -- rotations and metrics -----------------------------------------------------------------------------------------

def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """``[..., 6]`` → rotation ``[..., 3, 3]`` by Gram–Schmidt; the 6 numbers are the first two columns (Zhou et al.)."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(rot: torch.Tensor) -> torch.Tensor:
    """Rotation ``[..., 3, 3]`` → its 6D representation (first two columns)."""
    return torch.cat([rot[..., :, 0], rot[..., :, 1]], dim=-1)


def geodesic_rotation_error_deg(r_pred: torch.Tensor, r_gt: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) of the relative rotation ``R_predᵀ R_gt``, ``[..., 3, 3]`` → ``[...]``; symmetric in its arguments.

    ``atan2(‖axis·sin θ‖, cos θ)`` instead of ``acos`` of the trace: accurate near 0° and 180°, where acos is not.
    """
    rel = r_pred.transpose(-1, -2).double() @ r_gt.double()
    cos = (rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    skew = torch.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0],
                        rel[..., 1, 0] - rel[..., 0, 1]], dim=-1)
    sin = skew.norm(dim=-1) / 2.0
    return torch.rad2deg(torch.atan2(sin, cos)).to(r_pred.dtype)


def camera_translation(c2w: torch.Tensor) -> torch.Tensor:
    """World-to-camera translation ``−Rᵀ c`` of camera-to-world poses ``[..., 4, 4]`` → ``[..., 3]``."""
    return -(c2w[..., :3, :3].transpose(-1, -2) @ c2w[..., :3, 3:4]).squeeze(-1)


def compose_c2w(rot: torch.Tensor, t_cam: torch.Tensor) -> torch.Tensor:
    """Camera-to-world ``[..., 4, 4]`` from a rotation and a world-to-camera translation (centre ``c = −R t``)."""
    pose = torch.zeros(*rot.shape[:-2], 4, 4, dtype=rot.dtype, device=rot.device)
    pose[..., :3, :3] = rot
    pose[..., :3, 3] = -(rot @ t_cam.unsqueeze(-1)).squeeze(-1)
    pose[..., 3, 3] = 1.0
    return pose


def mean_rotation(rots: torch.Tensor) -> torch.Tensor:
    """The chordal L2 mean of rotations ``[N, 3, 3]``: their sum projected onto SO(3) (SVD, det +1)."""
    u, _, vt = torch.linalg.svd(rots.double().sum(0))
    fix = torch.diag(torch.tensor([1.0, 1.0, float(torch.linalg.det(u @ vt))], dtype=torch.float64))
    return (u @ fix @ vt).to(rots.dtype)


def constant_pose(train_c2w: torch.Tensor, max_poses: int = 2048, seed: int = 0) -> torch.Tensor:
    """The best pose that ignores its input, chosen on training poses ``[..., 4, 4]`` only.

    The rotation is whichever of the candidates (the chordal mean, and every training rotation) has the lowest
    mean geodesic error over the training rotations: with cameras all around an object the chordal mean is close
    to degenerate, and the best single training rotation is the fairer "no learning" baseline. The translation is
    the mean world-to-camera translation. At most ``max_poses`` (a seeded sample) are compared pairwise.
    """
    flat = train_c2w.reshape(-1, 4, 4)
    if len(flat) > max_poses:
        flat = flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:max_poses]]
    rots = flat[:, :3, :3]
    candidates = torch.cat([mean_rotation(rots)[None], rots])
    errors = geodesic_rotation_error_deg(candidates[:, None], rots[None]).mean(1)
    return compose_c2w(candidates[int(errors.argmin())], camera_translation(flat).mean(0))


def pose_errors(pred_c2w: torch.Tensor, gt_c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view translation error (scene units) and rotation error (degrees) of camera-to-world poses ``[..., 4, 4]``."""
    te = (pred_c2w[..., :3, 3] - gt_c2w[..., :3, 3]).norm(dim=-1)
    re = geodesic_rotation_error_deg(pred_c2w[..., :3, :3], gt_c2w[..., :3, :3])
    return te, re


def summarise_errors(te: torch.Tensor, re: torch.Tensor, te_scale: float = 100.0) -> dict[str, float]:
    """Mean/median TE (scene units × ``te_scale``), mean/median RE (°) and RE@5/15/30 (% of views)."""
    te, re = te.double().reshape(-1) * te_scale, re.double().reshape(-1)
    out = {"n_views": int(re.numel()), "te_mean": float(te.mean()), "te_median": float(te.median()),
           "re_mean": float(re.mean()), "re_median": float(re.median())}
    for thr in RE_THRESHOLDS:
        out[f"re@{thr:g}"] = float((re < thr).double().mean() * 100)
    return out


# -- settings ------------------------------------------------------------------------------------------------------

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


# -- model ---------------------------------------------------------------------------------------------------------

class VolumeTokenizer(nn.Module):
    """3D tokenizer: where each of the ``(R/P)³`` volume tokens queries its ``P³`` points, then a 3D conv embeds them.

    ``uniform``: the cell-centre grid of ``[-bound, bound]³`` (what ``izoo.nerf.query_grid`` samples); ``lc``: per
    volume a learnable centre and scale ``1 + tanh(ρ)``; ``lp`` / ``lp_reg``: every point learnable as
    ``bound · sin(θ)`` (``lp_reg`` adds the non-close penalty, α = bound-scaled min cell size), as the 2D tokenizers.
    Values are RGB and occupancy ``1 − exp(−σ δ)`` (δ = cell size), which keeps densities in [0, 1); with ``ink``
    the colour is ``(1 − RGB) · occupancy`` instead, 0 in empty space whatever colour the NeRF gives it there.
    """

    def __init__(self, kind: str, resolution: int, volume_size: int, bound: float, dim: int, ink: bool = False):
        super().__init__()
        self.kind, self.resolution, self.volume_size, self.bound = kind, resolution, volume_size, bound
        self.ink = ink
        n_side, p = resolution // volume_size, volume_size
        self.n_tokens = n_side ** 3
        axis = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 * bound - bound
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # [R, R, R, 3] (x, y, z)
        blocks = grid.reshape(n_side, p, n_side, p, n_side, p, 3).permute(0, 2, 4, 1, 3, 5, 6)
        blocks = blocks.reshape(self.n_tokens, p ** 3, 3)                             # [N, P³, 3]
        centres = blocks.mean(dim=1)
        self.cell = 2 * bound / resolution
        self.alpha = self.cell / 2  # the 2D α = min(1/H, 1/W) is half a cell of the (-1, 1) grid
        if kind == "uniform":
            self.register_buffer("points0", blocks)
        elif kind == "lc":
            self.register_buffer("offsets", blocks - centres[:, None, :])
            self.centres = nn.Parameter(centres)
            self.scale_logit = nn.Parameter(torch.zeros(self.n_tokens, 1, 1))
        elif kind in ("lp", "lp_reg"):
            self.theta = nn.Parameter(torch.asin(blocks / bound))
        else:
            raise ValueError(f"unknown volume tokenizer {kind!r}; choose one of {POSE_TOKENIZERS}")
        self.embed = nn.Conv3d(4, dim, kernel_size=p, stride=p)

    def points(self) -> torch.Tensor:
        """Current query points ``[N, P³, 3]``."""
        if self.kind == "uniform":
            return self.points0
        if self.kind == "lc":
            return self.centres[:, None, :] + (1.0 + torch.tanh(self.scale_logit)) * self.offsets
        return self.bound * torch.sin(self.theta)

    def penalty(self) -> torch.Tensor:
        """Non-close penalty of ``lp_reg`` (zero otherwise)."""
        if self.kind != "lp_reg":
            return torch.zeros((), device=self.embed.weight.device)
        return non_close_penalty(self.points(), self.alpha)

    def coordinate_parameters(self) -> list[nn.Parameter]:
        """The learnable query coordinates (empty for ``uniform``)."""
        return [p for name, p in self.named_parameters() if not name.startswith("embed.")]

    def values(self, nerf: Mapping[str, torch.Tensor], spec: NerfSpec) -> torch.Tensor:
        """Query B NeRFs → ``[B, N, P³, 4]`` (RGB, occupancy); differentiable w.r.t. the learnable points."""
        pts = self.points()
        batch = nerf["layer0.weight"].shape[0]
        flat = pts.reshape(1, -1, 3).expand(batch, -1, 3)
        dirs = torch.tensor((0.0, 0.0, -1.0), device=flat.device).expand_as(flat)  # query_grid's fixed direction
        rgb, sigma = query(nerf, flat, dirs, spec)
        occupancy = (1.0 - torch.exp(-sigma * self.cell)).unsqueeze(-1)
        colour = (1.0 - rgb) * occupancy if self.ink else rgb
        return torch.cat([colour, occupancy], dim=-1).reshape(batch, *pts.shape[:2], 4)

    def embed_values(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, N, P³, 4]`` → tokens ``[B, N, dim]`` by the 3D conv (values laid out as a block volume)."""
        batch, p, n_side = values.shape[0], self.volume_size, self.resolution // self.volume_size
        vol = values.reshape(batch, n_side, n_side, n_side, p, p, p, 4).permute(0, 7, 1, 4, 2, 5, 3, 6)
        vol = vol.reshape(batch, 4, self.resolution, self.resolution, self.resolution)
        return self.embed(vol).flatten(2).transpose(1, 2)


class PoseRegressor(nn.Module):
    """NeRF volume tokens + image tokens → transformer → rotation (6D) and translation of the camera."""

    def __init__(self, s: PoseSettings):
        super().__init__()
        self.settings = s
        self.tokenizer = VolumeTokenizer(s.tokenizer, s.grid_resolution, s.volume_size, s.grid_bound, s.dim, s.ink)
        n_vol, n_img = self.tokenizer.n_tokens, (s.image_size // s.image_patch) ** 2
        self.volume_pos = nn.Parameter(torch.zeros(1, n_vol, s.dim))
        self.volume_blocks = nn.ModuleList(Block(s.dim, s.heads, s.mlp_ratio, qkv_bias=True)
                                           for _ in range(s.volume_depth))
        self.volume_norm = nn.LayerNorm(s.dim)
        self.image_embed = nn.Conv2d(3, s.dim, s.image_patch, s.image_patch)
        self.image_pos = nn.Parameter(torch.zeros(1, n_img, s.dim))
        self.pose_token = nn.Parameter(torch.zeros(1, 1, s.dim))
        self.fusion_blocks = nn.ModuleList(Block(s.dim, s.heads, s.mlp_ratio, qkv_bias=True)
                                           for _ in range(s.fusion_depth))
        self.norm = nn.LayerNorm(s.dim)
        self.head = nn.Linear(s.dim, 9)
        for p in (self.volume_pos, self.image_pos, self.pose_token):
            trunc_normal_(p, std=0.02)
        with torch.no_grad():  # start at the identity rotation, object one radius ahead (cameras look down −z)
            self.head.weight.mul_(0.01)
            self.head.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0]))

    def volume_encoder_modules(self) -> list[nn.Module]:
        """The parts MAE pre-trains (tokenizer embedding, positions, volume blocks, norm)."""
        return [self.tokenizer.embed, self.volume_blocks, self.volume_norm]

    def encode_volume(self, nerf: Mapping[str, torch.Tensor], spec: NerfSpec) -> torch.Tensor:
        """``[S, N_vol, dim]`` volume features of S scenes."""
        x = self.tokenizer.embed_values(self.tokenizer.values(nerf, spec)) + self.volume_pos
        for block in self.volume_blocks:
            x = block(x)
        return self.volume_norm(x)

    def forward(self, nerf: Mapping[str, torch.Tensor], spec: NerfSpec,
                images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` ``[S, V, 3, h, w]`` in [0, 1] of S scenes → rotations ``[S, V, 3, 3]``, world-to-camera translations
        ``[S, V, 3]`` (``compose_c2w`` turns them into camera-to-world poses)."""
        n_scenes, n_views = images.shape[:2]
        if self.settings.ink:
            images = 1.0 - images  # the white background becomes 0, the object carries the signal
        vol = self.encode_volume(nerf, spec)
        vol = vol.unsqueeze(1).expand(-1, n_views, -1, -1).reshape(n_scenes * n_views, *vol.shape[1:])
        img = self.image_embed(images.flatten(0, 1)).flatten(2).transpose(1, 2) + self.image_pos
        x = torch.cat([self.pose_token.expand(img.shape[0], -1, -1), vol, img], dim=1)
        for block in self.fusion_blocks:
            x = block(x)
        out = self.head(self.norm(x[:, 0]))
        rot = rotation_6d_to_matrix(out[:, :6])
        # translation in units of the camera radius keeps the regression target O(1)
        t_cam = out[:, 6:] * self.settings.camera_radius
        return rot.view(n_scenes, n_views, 3, 3), t_cam.view(n_scenes, n_views, 3)


class VolumeMAE(nn.Module):
    """MAE pre-training of the volume encoder (He et al.; 3D as Feichtenhofer et al.): mask 80 % of the volume tokens,
    encode the visible ones, an 8-layer decoder with a shared mask token reconstructs every token's RGB + occupancy."""

    def __init__(self, model: PoseRegressor, s: PoseSettings):
        super().__init__()
        self.model = model
        self.decoder_embed = nn.Linear(s.dim, s.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, s.dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, model.tokenizer.n_tokens, s.dim))
        self.decoder_blocks = nn.ModuleList(Block(s.dim, s.heads, s.mlp_ratio, qkv_bias=True)
                                            for _ in range(s.mae_decoder_depth))
        self.decoder_norm = nn.LayerNorm(s.dim)
        self.decoder_pred = nn.Linear(s.dim, s.volume_size ** 3 * 4)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.decoder_pos, std=0.02)
        self.mask_ratio = s.mae_mask_ratio

    def forward(self, nerf: Mapping[str, torch.Tensor], spec: NerfSpec, generator: torch.Generator) -> torch.Tensor:
        """MSE of the reconstructed values on the masked tokens."""
        tok = self.model.tokenizer
        with torch.no_grad():  # targets (and pre-training inputs) at the tokenizer's current, frozen points
            values = tok.values(nerf, spec)
        x = tok.embed_values(values) + self.model.volume_pos
        batch, n, dim = x.shape
        n_keep = max(1, int(round(n * (1 - self.mask_ratio))))
        noise = torch.rand(batch, n, generator=generator).to(x.device)
        order = noise.argsort(dim=1)
        keep = order[:, :n_keep]
        x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, dim))
        for block in self.model.volume_blocks:
            x = block(x)
        x = self.decoder_embed(self.model.volume_norm(x))
        full = self.mask_token.expand(batch, n, dim).clone()
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, dim), x) + self.decoder_pos
        for block in self.decoder_blocks:
            full = block(full)
        pred = self.decoder_pred(self.decoder_norm(full))
        masked = torch.ones(batch, n, dtype=torch.bool, device=x.device)
        masked.scatter_(1, keep, False)
        err = (pred - values.flatten(2)).pow(2).mean(-1)
        return (err * masked).sum() / masked.sum()


# -- data ----------------------------------------------------------------------------------------------------------

@dataclass
class SceneCameras:
    """What one scene's archive entry says about its cameras."""

    radius: float
    elevation_range: tuple[float, float]  # radians
    fov_x: float
    stored_poses: torch.Tensor | None     # held-out poses [V, 4, 4] when the archive has them


POSE_EXTRAS = ("test_poses", "eval_poses", "heldout_poses", "poses", "cameras")
FOCAL_EXTRAS = ("test_focal", "eval_focal", "focal")
WIDTH_EXTRAS = ("test_width", "width", "image_width")


def scene_cameras(arch: InrArchive, row: int, settings: PoseSettings) -> SceneCameras:
    """Camera radius, elevation range and field of view of one scene, from its extras or the settings."""
    poses = None
    for name in POSE_EXTRAS:
        if name in arch.extra_names:
            value = np.asarray(arch.extras(name, [row])[0], dtype=np.float32)
            if value.shape[-2:] == (4, 4):
                value = value.reshape(-1, 4, 4)
                # archives pad the held-out cameras of scenes with fewer views with NaN
                poses = torch.from_numpy(value[np.isfinite(value).all(axis=(1, 2))])
                break
    fov = BLENDER_FOV_X
    focal_name = next((n for n in FOCAL_EXTRAS if n in arch.extra_names), None)
    width_name = next((n for n in WIDTH_EXTRAS if n in arch.extra_names), None)
    if focal_name and width_name:
        focal = float(np.asarray(arch.extras(focal_name, [row])).reshape(-1)[0])
        width = float(np.asarray(arch.extras(width_name, [row])).reshape(-1)[0])
        fov = 2 * math.atan(0.5 * width / focal)
    if poses is None or len(poses) == 0:
        lo, hi = settings.elevation_deg
        return SceneCameras(settings.camera_radius, (math.radians(lo), math.radians(hi)), fov, None)
    centres = poses[:, :3, 3]
    radius = float(centres.norm(dim=-1).mean())
    elev = torch.asin((centres[:, 2] / centres.norm(dim=-1).clamp_min(1e-6)).clamp(-1, 1))
    return SceneCameras(radius, (float(elev.min()), float(elev.max())), fov, poses)


def sample_poses(n: int, cams: SceneCameras, generator: torch.Generator) -> torch.Tensor:
    """``[n, 4, 4]`` look-at-origin cameras at the scene's radius, uniform azimuth, uniform elevation in its range."""
    az = torch.rand(n, generator=generator) * 2 * math.pi
    lo, hi = cams.elevation_range
    el = lo + (hi - lo) * torch.rand(n, generator=generator)
    pos = torch.stack([cams.radius * el.cos() * az.cos(), cams.radius * el.cos() * az.sin(),
                       cams.radius * el.sin()], dim=-1)
    return torch.stack([look_at_pose(p.tolist()) for p in pos])


def nerf_params(arch: InrArchive, rows: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
    """Stacked NeRF parameters of the given archive rows, keyed by name."""
    return {name: t.to(device) for name, t in zip(arch.param_names, arch.params_batch(list(rows)))}


def as_float(images_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 bank images → float in [0, 1] on ``device``."""
    return images_u8.to(device).float() / 255.0


@dataclass
class ViewBank:
    """Rendered views of some scenes: ``images`` ``[S, V, 3, h, w]`` uint8, ``poses`` ``[S, V, 4, 4]`` (camera-to-world)."""

    rows: list[int]
    images: torch.Tensor
    poses: torch.Tensor
    focal: torch.Tensor  # [S] at the bank's image size


def render_bank(arch: InrArchive, spec: NerfSpec, rows: Sequence[int], n_views: int, settings: PoseSettings,
                generator: torch.Generator, device: torch.device, use_stored: bool) -> ViewBank:
    """Render ``n_views`` views per scene from its NeRF (stored held-out poses first when ``use_stored``)."""
    images, poses, focals = [], [], []
    size = settings.image_size
    for row in rows:
        cams = scene_cameras(arch, row, settings)
        chosen = cams.stored_poses[:n_views] if (use_stored and cams.stored_poses is not None) else \
            torch.empty(0, 4, 4)
        if len(chosen) < n_views:
            chosen = torch.cat([chosen, sample_poses(n_views - len(chosen), cams, generator)])
        focal = 0.5 * size / math.tan(0.5 * cams.fov_x)
        nerf = nerf_params(arch, [row], device)
        views = render_views(nerf, spec, chosen.to(device).unsqueeze(0), size, size, focal, settings.near,
                             settings.far, settings.render_samples, settings.chunk_rays)[0]
        # 8-bit like the dataset's PNGs: 5,287 scenes × 96 views × 128² stay at 25 GB instead of 100 GB of float32
        images.append((views.permute(0, 3, 1, 2).clamp(0, 1) * 255).round().to(torch.uint8).cpu())
        poses.append(chosen)
        focals.append(focal)
    return ViewBank(list(rows), torch.stack(images), torch.stack(poses), torch.tensor(focals))


def read_kept(path: str | Path | None, arch: InrArchive) -> pd.DataFrame:
    """Kept scenes (``item_id`` + ``label``) matched to archive rows; all archive items when ``path`` is None."""
    items = arch.items
    items = items.assign(row=np.arange(len(items)))
    if path is None:
        return items[["item_id", "label", "row"]]
    try:
        kept = pd.read_csv(path)
    except FileNotFoundError as exc:
        raise IzooError("kept-scenes table is missing", path, "run the omni report rule that writes it") from exc
    if "item_id" not in kept.columns:
        raise IzooError(f"kept-scenes table has no item_id column (columns: {list(kept.columns)})", path,
                        "pass reports/kept_scenes.csv written by the scene filter")
    if "kept" in kept.columns:
        kept = kept[kept["kept"].astype(bool)]
    kept = kept[["item_id"]].astype(str).drop_duplicates()
    merged = kept.merge(items[["item_id", "label", "row"]], on="item_id", how="left")
    missing = merged["row"].isna()
    if missing.any():
        raise IzooError(f"{int(missing.sum())} kept scenes are not in the archive (e.g. "
                        f"{merged.loc[missing, 'item_id'].iloc[0]})", path, "pass the archive the table was made from")
    return merged.astype({"row": int})


def split_scenes(kept: pd.DataFrame, unseen_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Archive rows of seen (training) and unseen (held-out) scenes: per class, ``unseen_fraction`` held out
    (rounded, at least one) when the class has at least 2 scenes; a class with one scene is always seen."""
    rng = np.random.default_rng(seed)
    seen, unseen = [], []
    for _, group in kept.groupby("label", sort=True):
        rows = group["row"].to_numpy()
        rows = rows[rng.permutation(len(rows))]
        n_out = 0 if len(rows) < 2 or unseen_fraction <= 0 else max(1, int(round(len(rows) * unseen_fraction)))
        n_out = min(n_out, len(rows) - 1)
        unseen += rows[:n_out].tolist()
        seen += rows[n_out:].tolist()
    return sorted(seen), sorted(unseen)


# -- training and evaluation ---------------------------------------------------------------------------------------

def _optimizer(model: PoseRegressor, s: PoseSettings) -> torch.optim.Optimizer:
    """AdamW groups: pretrained volume encoder at ``lr_pretrained`` (when pre-trained), coordinates at ``tokenizer_lr``."""
    coords = {id(p) for p in model.tokenizer.coordinate_parameters()}
    encoder = {id(p) for m in model.volume_encoder_modules() for p in m.parameters()} | {id(model.volume_pos)}
    groups = {"coords": [], "encoder": [], "rest": []}
    for p in model.parameters():
        key = "coords" if id(p) in coords else "encoder" if id(p) in encoder else "rest"
        groups[key].append(p)
    spec = [{"params": groups["rest"], "lr": s.lr},
            {"params": groups["encoder"], "lr": s.lr_pretrained if s.pretrain else s.lr}]
    if groups["coords"]:
        spec.append({"params": groups["coords"], "lr": s.tokenizer_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(spec, weight_decay=s.weight_decay)


def pretrain_mae(model: PoseRegressor, arch: InrArchive, spec: NerfSpec, rows: Sequence[int], s: PoseSettings,
                 seed: int, device: torch.device) -> list[float]:
    """MAE pre-training of the volume encoder on the training scenes; returns the loss per epoch."""
    mae = VolumeMAE(model, s).to(device)
    # the query coordinates stay frozen (the targets are read at them); unused pose-head parts get no gradient
    coords = {id(p) for p in model.tokenizer.coordinate_parameters()}
    params = [p for p in mae.parameters() if id(p) not in coords]
    optimiser = torch.optim.AdamW(params, lr=s.mae_lr, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    for epoch in range(s.mae_epochs):
        order = torch.randperm(len(rows), generator=gen).tolist()
        epoch_loss = []
        for start in range(0, len(order), s.scenes_per_batch):
            batch_rows = [rows[i] for i in order[start:start + s.scenes_per_batch]]
            loss = mae(nerf_params(arch, sorted(batch_rows), device), spec, gen)
            train_step(optimiser, loss)
            epoch_loss.append(float(loss.detach()))
        losses.append(float(np.mean(epoch_loss)))
        if s.log_every and (epoch + 1) % s.log_every == 0:
            log.info("MAE epoch %d/%d loss %.5f", epoch + 1, s.mae_epochs, losses[-1])
    return losses


def _predict(model: PoseRegressor, arch: InrArchive, spec: NerfSpec, bank: ViewBank, s: PoseSettings,
             device: torch.device) -> torch.Tensor:
    """Predicted camera-to-world poses ``[S, V, 4, 4]`` for every view of a bank."""
    model.eval()
    out = []
    with torch.no_grad():
        for k, row in enumerate(bank.rows):
            rot, t_cam = model(nerf_params(arch, [row], device), spec, as_float(bank.images[k:k + 1], device))
            out.append(compose_c2w(rot[0], t_cam[0]).cpu())
    model.train()
    return torch.stack(out)


def _refine_bank(arch: InrArchive, spec: NerfSpec, bank: ViewBank, pred: torch.Tensor, s: PoseSettings,
                 seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """iNeRF-refine up to ``refine_max_views`` predictions; returns refined poses, their ground truth, loss stats."""
    rs = RefineSettings(steps=s.refine_steps, lr=s.refine_lr, n_rays=s.refine_rays, near=s.near, far=s.far,
                        n_samples=s.render_samples)
    refined, gts, first, last = [], [], [], []
    pairs = [(k, v) for k in range(len(bank.rows)) for v in range(bank.poses.shape[1])][:s.refine_max_views]
    for k, v in pairs:
        nerf = nerf_params(arch, [bank.rows[k]], device)
        target = as_float(bank.images[k, v].permute(1, 2, 0), device)
        pose, losses = refine_pose(nerf, spec, target, pred[k, v].to(device), float(bank.focal[k]), rs,
                                   seed=seed + k * 1000 + v)
        refined.append(pose.cpu())
        gts.append(bank.poses[k, v])
        if losses:
            first.append(losses[0])
            last.append(losses[-1])
    stats = {"refined_views": len(refined), "photometric_first": float(np.mean(first)) if first else math.nan,
             "photometric_last": float(np.mean(last)) if last else math.nan}
    return torch.stack(refined), torch.stack(gts), stats


def train_pose(archive_path: str | Path, kept_path: str | Path | None, seed: int = 0,
               settings: PoseSettings | None = None) -> dict[str, Any]:
    """Train the pose regressor on seen scenes, evaluate on seen and unseen scenes; returns the result record."""
    s = settings or PoseSettings()
    s.validate()
    device = resolve_device(s.device)
    seed_everything(seed)
    arch = open_archive(archive_path)
    if arch.model_family != "nerf":
        raise IzooError(f"archive holds {arch.model_family} INRs, not NeRFs", arch.path,
                        "pass the OmniObject3D NeRF archive (results/omni/archive/all.h5)")
    spec = NerfSpec.from_dict(arch.attrs.get("architecture") or {})
    rendering = arch.attrs.get("rendering") or {}
    if s.use_archive_rendering and rendering:  # render views as the NeRFs were fitted
        s.near, s.far = float(rendering.get("near", s.near)), float(rendering.get("far", s.far))
    kept = read_kept(kept_path, arch)
    seen, unseen = split_scenes(kept, s.unseen_fraction, seed)
    if not seen:
        raise IzooError("no scenes to train on", kept_path, "keep more scenes (check the scene filter report)")
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    train_bank = render_bank(arch, spec, seen, s.bank_views, s, gen, device, use_stored=False)
    eval_gen = torch.Generator().manual_seed(seed + 7919)  # a different pose stream: seen-scene test poses are new
    seen_bank = render_bank(arch, spec, seen, s.eval_views, s, eval_gen, device, use_stored=True)
    unseen_bank = render_bank(arch, spec, unseen, s.eval_views, s, eval_gen, device, use_stored=True) \
        if unseen else None
    render_seconds = time.time() - start

    model = PoseRegressor(s).to(device)
    mae_losses = pretrain_mae(model, arch, spec, seen, s, seed, device) if s.pretrain else []
    optimiser = _optimizer(model, s)
    steps_per_epoch = math.ceil(len(seen) / s.scenes_per_batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, s.epochs * steps_per_epoch))
    losses = []
    train_start = time.time()
    for epoch in range(s.epochs):
        order = torch.randperm(len(seen), generator=gen).tolist()
        epoch_loss = []
        for b in range(0, len(order), s.scenes_per_batch):
            idx = sorted(order[b:b + s.scenes_per_batch])
            views = torch.stack([torch.randperm(s.bank_views, generator=gen)[:s.views_per_scene] for _ in idx])
            images = as_float(torch.stack([train_bank.images[i, v] for i, v in zip(idx, views)]), device)
            poses = torch.stack([train_bank.poses[i, v] for i, v in zip(idx, views)]).to(device)
            rot, t_cam = model(nerf_params(arch, [seen[i] for i in idx], device), spec, images)
            rot_loss = (rot - poses[..., :3, :3]).pow(2).sum((-1, -2)).mean()
            trans_loss = ((t_cam - camera_translation(poses)) / s.camera_radius).pow(2).sum(-1).mean()
            loss = s.rotation_weight * rot_loss + s.translation_weight * trans_loss
            train_step(optimiser, loss, schedule, model.tokenizer.penalty(), s.reg_weight)
            epoch_loss.append(float(loss.detach()))
        losses.append(float(np.mean(epoch_loss)))
        if s.log_every and (epoch + 1) % s.log_every == 0:
            log.info("epoch %d/%d loss %.4f", epoch + 1, s.epochs, losses[-1])
    train_seconds = time.time() - train_start

    results: dict[str, Any] = {}
    # what no learning scores on the same views: one constant pose chosen on the training poses
    reference: dict[str, Any] = {"rule": "one constant pose: the best training rotation, the mean translation"}
    still = constant_pose(train_bank.poses)
    for split, bank in (("seen", seen_bank), ("unseen", unseen_bank)):
        if bank is None:
            results[split] = reference[split] = None
            continue
        reference[split] = summarise_errors(*pose_errors(still.expand_as(bank.poses), bank.poses))
        pred = _predict(model, arch, spec, bank, s, device)
        te, re = pose_errors(pred, bank.poses)
        results[split] = summarise_errors(te, re)
        te_cam = (camera_translation(pred) - camera_translation(bank.poses)).norm(dim=-1)
        results[split]["te_cam_mean"] = float(te_cam.mean() * 100)
        if s.refine:
            refined, gts, stats = _refine_bank(arch, spec, bank, pred, s, seed, device)
            te_r, re_r = pose_errors(refined, gts)
            te_c, re_c = pose_errors(pred.reshape(-1, 4, 4)[:len(gts)], gts)
            results[split]["refined"] = {**summarise_errors(te_r, re_r), **stats,
                                         "re_mean_before": float(re_c.mean()), "te_mean_before": float(te_c.mean() * 100)}
    labels = dict(zip(kept["row"], kept["label"]))
    return {
        "task": "pose",
        "tokenizer": s.tokenizer,
        "method": DISPLAY_NAMES[s.tokenizer].replace("Ours", "Ours+Pre" if s.pretrain else "Ours", 1),
        "pretrain": s.pretrain,
        "refine": s.refine,
        "seed": seed,
        "settings": dataclasses.asdict(s),
        "archive": str(archive_path),
        "kept": None if kept_path is None else str(kept_path),
        "split": {"seen_scenes": len(seen), "unseen_scenes": len(unseen),
                  "unseen_item_ids": [str(arch.items["item_id"].iloc[r]) for r in unseen],
                  "classes": int(kept["label"].nunique()),
                  "rule": f"per class, {s.unseen_fraction:.0%} of scenes held out (>= 1 when the class has >= 2); "
                          "seen = new poses of training scenes", "unseen_labels": [int(labels[r]) for r in unseen]},
        "params": count_params(model),
        "seen": results["seen"],
        "unseen": results["unseen"],
        "reference": reference,
        "train_loss": losses,
        "mae_loss": mae_losses,
        "render_seconds": render_seconds,
        "train_seconds": train_seconds,
        "te_unit": "scene units x 100 (cm when one unit is a metre)",
        "device": str(device),
    }


# -- table and CLI -------------------------------------------------------------------------------------------------

#: (table key, column name) of the metrics of Table 5, in its row order
TABLE_METRICS = (("te_mean", "TE"), ("re_mean", "RE"), ("re@5", "RE@5"), ("re@15", "RE@15"), ("re@30", "RE@30"))
METRIC_LABELS = {"TE": "TE (cm) ↓", "RE": "RE (°) ↓", "RE@5": "RE@5 (%) ↑", "RE@15": "RE@15 (%) ↑",
                 "RE@30": "RE@30 (%) ↑"}


def _metric_cells(row: dict[str, Any], split: str, recs: Sequence[Mapping[str, Any] | None]) -> None:
    """Fill ``row`` with mean ± std over seeds of each Table-5 metric of ``split`` (``recs``: one summary per run)."""
    recs = [x for x in recs if x]
    for key, name in TABLE_METRICS:
        stats = mean_std([x[key] for x in recs])
        row[f"{split}_{name}"] = format_mean_std(*stats)
        row[f"{split}_{name}_mean"] = stats[0]


def pose_table(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The paper's Table 5 from run records: one row per (tokenizer, variant), mean ± std over seeds.

    Variants: trained (``plain``), with a pre-trained volume encoder (``pretrain``, "+Pre"), and each of them after
    refinement ("+Ref", from the runs that refined: their refined views), then one row of what no learning scores
    (one constant pose, ``constant_pose``) on the same views.
    """
    rows = []
    order = {k: i for i, k in enumerate(POSE_TOKENIZERS)}
    keys = sorted({(r["tokenizer"], bool(r["pretrain"])) for r in runs}, key=lambda k: (order.get(k[0], 99), k[1]))
    for tok, pre in keys:
        group = [r for r in runs if r["tokenizer"] == tok and bool(r["pretrain"]) == pre]
        variant = "pretrain" if pre else "plain"
        row: dict[str, Any] = {"method": group[0]["method"], "tokenizer": tok, "variant": variant,
                               "seeds": len(group)}
        for split in ("seen", "unseen"):
            _metric_cells(row, split, [r[split] for r in group])
        rows.append(row)
        refined = [r for r in group if r.get("refine")]
        if refined:
            row = {"method": group[0]["method"] + "+Ref", "tokenizer": tok, "variant": f"{variant}_refine"
                   if pre else "refine", "seeds": len(refined)}
            for split in ("seen", "unseen"):
                _metric_cells(row, split, [(r[split] or {}).get("refined") for r in refined])
            rows.append(row)
    references = seed_references(runs)
    if references:
        row = {"method": "no learning (constant pose)", "tokenizer": "reference", "variant": "reference",
               "seeds": len(references)}
        for split in ("seen", "unseen"):
            _metric_cells(row, split, [ref[split] for ref in references])
        rows.append(row)
    return pd.DataFrame(rows)


def pose_markdown(table: pd.DataFrame, note: str) -> str:
    """Table 5 layout: metrics as rows, methods (variants, then the no-learning reference) as columns."""
    methods = table["method"].tolist()
    lines = ["### OmniObject3D-INR pose regression (the paper's Table 5)", "",
             "| Metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for split in ("seen", "unseen"):
        lines.append(f"| **{split.capitalize()} scenes** |" + " |" * len(methods))
        for _, name in TABLE_METRICS:
            lines.append(f"| {METRIC_LABELS[name]} | " + " | ".join(str(v) for v in table[f"{split}_{name}"]) + " |")
    return "\n".join(lines + ["", note, ""])


def _run_pose(args: argparse.Namespace) -> int:
    settings = PoseSettings.from_json(args.settings)
    if args.tokenizer:
        settings.tokenizer = args.tokenizer
    if args.device:
        settings.device = args.device
    record = train_pose(args.archive, args.kept, args.seed, settings)
    write_result(record, args.out)
    unseen = record["unseen"] or {}
    log.info("pose %s seed %d: seen RE %.2f°, unseen RE %s°", record["method"], args.seed,
             record["seen"]["re_mean"], f"{unseen.get('re_mean', math.nan):.2f}")
    return 0


def _run_pose_table(args: argparse.Namespace) -> int:
    runs = read_results(args.runs, "pose")
    table = pose_table(runs)
    s = runs[0]["settings"] if runs else {}
    note = (f"Mean ± std over seeds. Grid {s.get('grid_resolution')}³, volume {s.get('volume_size')}, views "
            f"{s.get('image_size')}², {s.get('epochs')} epochs. TE = camera-centre distance in scene units × 100; "
            "RE = geodesic rotation error; +Ref = after iNeRF-style refinement (the paper's RE+Ref row), on the "
            f"first {s.get('refine_max_views')} views of each split. Seen = new poses of training scenes; unseen = "
            "held-out scenes; the no-learning column predicts one constant pose (chosen on the training poses) "
            "for every view. Paper (unseen, no refinement): RE 21.90°, RE@30 77.50 %.")
    write_table(table, pose_markdown(table, note), args.out_csv, args.out_md)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench-pose`` and ``bench-pose-table`` to the ``izoo`` CLI."""
    p = subparsers.add_parser("bench-pose", help="train + evaluate the OmniObject3D-INR pose regression benchmark")
    p.add_argument("--archive", required=True, help="NeRF archive (results/omni/archive/all.h5)")
    p.add_argument("--kept", default=None, help="kept_scenes.csv (item_id[, label]); all archive scenes if omitted")
    p.add_argument("--settings", default=None, help="JSON object or file overriding PoseSettings (defaults = paper)")
    p.add_argument("--tokenizer", default=None, choices=POSE_TOKENIZERS, help="overrides settings.tokenizer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="auto (CUDA if present), cpu, cuda, ...")
    p.add_argument("--out", required=True, help="result JSON")
    p.set_defaults(func=_run_pose)
    t = subparsers.add_parser("bench-pose-table", help="Table 5 from bench-pose result files")
    t.add_argument("--runs", nargs="+", required=True)
    t.add_argument("--out-csv", required=True)
    t.add_argument("--out-md", required=True)
    t.set_defaults(func=_run_pose_table)
