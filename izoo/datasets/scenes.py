"""Multi-view scenes in the NeRF-synthetic / OmniObject3D (Blender) style: ``transforms*.json`` + RGBA images."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from izoo.datasets.base import (BadItem, ItemRef, Sample, Scene, SourceDataset, check_image_file, open_image,
                                parse_size, to_float_image)
from izoo.errors import IzooError

EXPECTED = ("one folder per scene (optionally grouped in class folders) holding transforms.json or "
            "transforms_{train,val,test}.json with camera_angle_x and frames [{file_path, transform_matrix}], "
            "and the RGBA images they name")
#: order in which per-split transform files are concatenated into one view list
_JSON_ORDER = {"transforms_train": 0, "transforms_val": 1, "transforms_test": 2}
_RENDER_DIR = "render"  # OmniObject3D keeps a scene's renders in <scene>/render/


@dataclass(frozen=True)
class View:
    """One frame of a scene as written in its transforms file."""

    path: Path
    pose: np.ndarray  # [4, 4] camera-to-world
    camera_angle_x: float


def class_of(rel: Path) -> str:
    """Class name of a scene folder relative to its split: the class folder, or the name minus a numeric suffix."""
    if len(rel.parts) >= 2:
        return rel.parts[0]
    stripped = re.sub(r"[_-]?\d+$", "", rel.name)
    return stripped or rel.name


class ScenesSource(SourceDataset):
    """Scenes composited on white, resized to ``size``; the first ``train_views`` views train, the rest are held out."""

    format = "scenes"
    layout = EXPECTED
    default_splits = ("train",)

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.size = parse_size(self.cfg.get("size", 400), "size")
        self.train_views = int(self.cfg.get("train_views", 96))
        if self.train_views < 1:
            raise IzooError(f"train_views must be >= 1, got {self.train_views}", None, "fix source.train_views")
        self.pattern = str(self.cfg.get("transforms", "transforms*.json"))
        # discovering scenes walks the whole dataset, so it happens only when listing (manifest), never per job
        self._scenes: dict[str, list[Path]] = {}
        self._class_names: list[str] | None = None

    def _split_base(self, split: str) -> Path:
        if len(self._splits) == 1 and not (self.root / split).is_dir():
            return self.root  # one split: the scenes may sit directly under root
        base = self.root / split
        if not base.is_dir():
            raise IzooError(f"split folder {split!r} is missing", base, f"use {EXPECTED}")
        return base

    def _scene_jsons(self, scene_dir: Path) -> list[Path]:
        """A scene's transforms files in view order (train, val, test, then others by name)."""
        for json_dir in (scene_dir / _RENDER_DIR, scene_dir):
            files = [f for f in json_dir.glob(self.pattern) if f.is_file()] if json_dir.is_dir() else []
            if files:
                per_split = [f for f in files if f.stem in _JSON_ORDER]
                # with per-split files present, a plain transforms.json would repeat their frames
                return sorted(per_split or files, key=lambda f: (_JSON_ORDER.get(f.stem, 9), f.name))
        return []

    def _discover(self, split: str) -> list[Path]:
        """Every scene folder of ``split``, in path order."""
        if split not in self._scenes:
            base = self._split_base(split)
            scene_dirs: set[Path] = set()
            for json_path in base.rglob(self.pattern):
                if json_path.is_file() and not any(p.startswith(".") for p in json_path.relative_to(base).parts):
                    json_dir = json_path.parent
                    scene_dirs.add(json_dir.parent if json_dir.name == _RENDER_DIR and json_dir != base else json_dir)
            self._scenes[split] = sorted(scene_dirs, key=lambda d: d.relative_to(base).as_posix())
        return self._scenes[split]

    def classes(self) -> dict[int, str]:
        """Label → class name (class folders, or scene names without their numeric suffix), over all splits."""
        if self._class_names is None:
            self._class_names = sorted({class_of(scene_dir.relative_to(self._split_base(split)))
                                        for split in self._splits for scene_dir in self._discover(split)})
        return dict(enumerate(self._class_names))

    def _list(self, split: str) -> Iterable[ItemRef | BadItem]:
        base = self._split_base(split)
        label = {name: k for k, name in self.classes().items()}
        for scene_dir in self._discover(split):
            yield ItemRef(scene_dir.name, split, label[class_of(scene_dir.relative_to(base))],
                          scene_dir.relative_to(self.root).as_posix())

    def _views(self, ref: ItemRef) -> list[View]:
        """Parse a scene's transforms files into views; any malformed entry is a bad item."""
        files = self._scene_jsons(self.root / ref.source_id)
        if not files:
            raise self.bad(self.root / ref.source_id, f"scene folder has no {self.pattern} file", f"use {EXPECTED}")
        views: list[View] = []
        for json_path in files:
            try:
                meta = json.loads(json_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise self.bad(json_path, f"unreadable transforms file ({type(exc).__name__}: {exc})") from None
            if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
                raise self.bad(json_path, "transforms file has no frames list", f"use {EXPECTED}")
            angle = meta.get("camera_angle_x")
            for k, frame in enumerate(meta["frames"]):
                try:
                    file_path = str(frame["file_path"])
                    pose = np.asarray(frame["transform_matrix"], dtype=np.float64)
                    frame_angle = float(frame.get("camera_angle_x", angle))
                except (KeyError, TypeError, ValueError) as exc:
                    raise self.bad(json_path, f"frame {k} lacks file_path, transform_matrix or camera_angle_x "
                                              f"({type(exc).__name__}: {exc})", f"use {EXPECTED}") from None
                if pose.shape != (4, 4) or not np.isfinite(pose).all():
                    raise self.bad(json_path, f"frame {k}: transform_matrix is not a finite 4x4 matrix")
                if not 0 < frame_angle < math.pi:
                    raise self.bad(json_path, f"frame {k}: camera_angle_x {frame_angle} is not in (0, pi)")
                views.append(View(self._image_path(json_path.parent, file_path), pose, frame_angle))
        angles = {round(v.camera_angle_x, 9) for v in views}
        if len(angles) > 1:
            raise self.bad(files[0].parent, f"views disagree on camera_angle_x ({sorted(angles)}); izoo needs one "
                                            "focal length per scene")
        if len(views) <= self.train_views:
            raise self.bad(files[0].parent, f"scene has {len(views)} views; needs more than train_views="
                                            f"{self.train_views} so some are held out", "lower source.train_views")
        return views

    @staticmethod
    def _image_path(json_dir: Path, file_path: str) -> Path:
        path = json_dir / file_path
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg") and not path.is_file():
            path = path.with_name(path.name + ".png")  # NeRF-synthetic names frames without extension
        return path

    def _check_view_size(self, path: Path, size: tuple[int, int], first: tuple[int, int]) -> None:
        if size != first:
            raise self.bad(path, f"image of unexpected size {size[0]}x{size[1]} (WxH); the scene's first view is "
                                 f"{first[0]}x{first[1]}")
        self.check_aspect(path, *size, "set source.size to the views' aspect ratio")

    def _check(self, ref: ItemRef, full: bool) -> None:
        views = self._views(ref)
        first = check_image_file(views[0].path, full)
        for view in views:
            self._check_view_size(view.path, check_image_file(view.path, full), first)

    def _load(self, ref: ItemRef) -> Sample:
        views = self._views(ref)
        height, width = self.size
        images = []
        first: tuple[int, int] | None = None
        for view in views:
            img = open_image(view.path, "RGBA")
            first = first or img.size
            self._check_view_size(view.path, img.size, first)
            rgba = to_float_image(img)
            # straight (non-premultiplied) alpha, as Blender writes it: composite on white before resizing
            rgb = rgba[:3] * rgba[3:] + (1.0 - rgba[3:])
            images.append(rgb)
        stack = torch.stack(images)
        if (stack.shape[-2], stack.shape[-1]) != (height, width):
            stack = TF.resize(stack, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True)
        stack = stack.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()
        source_width = first[0]
        focal = 0.5 * source_width / math.tan(0.5 * views[0].camera_angle_x) * (width / source_width)
        poses = torch.from_numpy(np.stack([v.pose for v in views]).astype(np.float32))
        n_views = len(views)
        # the label comes from the manifest: checking it against all class names would walk the whole dataset
        class_name = class_of((self.root / ref.source_id).relative_to(self._split_base(ref.split)))
        scene = Scene(images=stack, poses=poses, focal=float(focal), height=height, width=width,
                      train_views=list(range(self.train_views)), test_views=list(range(self.train_views, n_views)),
                      label=ref.label, class_name=class_name)
        return Sample(item_id=ref.item_id, label=scene.label, image=None, scene=scene)
