"""Pose training data: each scene's cameras (from its archived extras), rendered view banks, kept scenes and
the seen/unseen split."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from izoo.archive.reader import InrArchive
from izoo.benchmarks.pose.settings import PoseSettings
from izoo.errors import IzooError
from izoo.nerf.archive import CAMERA_EXTRAS
from izoo.nerf.model import NerfSpec
from izoo.nerf.render import render_views
from izoo.nerf.synthetic import look_at_pose

#: Blender/NeRF-synthetic horizontal field of view (camera_angle_x), used when an archive stores no focal length
BLENDER_FOV_X = 0.6911112070083618


@dataclass
class SceneCameras:
    """What one scene's archive entry says about its cameras."""

    radius: float
    elevation_range: tuple[float, float]  # radians
    fov_x: float
    stored_poses: torch.Tensor | None     # held-out poses [V, 4, 4] when the archive has them


def scene_cameras(arch: InrArchive, row: int, settings: PoseSettings) -> SceneCameras:
    """Camera radius, elevation range and field of view of one scene, from its camera extras or the settings.

    The extras are the NeRF family's ``CAMERA_EXTRAS``; an archive without them (e.g. fitted elsewhere) falls back
    to the settings' radius and elevation range and the Blender field of view.
    """
    names = CAMERA_EXTRAS
    poses = None
    if names["poses"] in arch.extra_names:
        value = np.asarray(arch.extras(names["poses"], [row])[0], dtype=np.float32).reshape(-1, 4, 4)
        # archives pad the held-out cameras of scenes with fewer views with NaN
        poses = torch.from_numpy(value[np.isfinite(value).all(axis=(1, 2))])
    fov = BLENDER_FOV_X
    if names["focal"] in arch.extra_names and names["width"] in arch.extra_names:
        focal = float(np.asarray(arch.extras(names["focal"], [row])).reshape(-1)[0])
        width = float(np.asarray(arch.extras(names["width"], [row])).reshape(-1)[0])
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
