"""Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine``/``gtCoarse`` ``*_labelIds.png``, mapped to the 19 train ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from izoo.datasets.base import (NO_LABEL, BadItem, ItemRef, Sample, SourceDataset, check_image_file, open_image,
                                parse_size, sorted_dirs, to_float_image)
from izoo.errors import IzooError

IGNORE = 255
#: official Cityscapes label id -> train id (cityscapesScripts ``labels.py``); ids without a train id -> 255
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
TRAIN_ID_NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                  "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                  "bicycle"]
#: label ids that may appear in a labelIds PNG: 0..33, and 255 (license plate, id -1, written as 255)
VALID_LABEL_IDS = set(range(34)) | {255}
LABEL_KINDS = {"fine": "gtFine", "coarse": "gtCoarse"}
IMAGE_SUFFIX = "_leftImg8bit.png"
EXPECTED = ("the Cityscapes layout: <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png with "
            "<root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png (or gtCoarse)")


def _lookup_table() -> np.ndarray:
    table = np.full(256, IGNORE, dtype=np.uint8)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


TRAIN_ID_LUT = _lookup_table()
_INVALID_ID = np.ones(256, dtype=bool)
_INVALID_ID[sorted(VALID_LABEL_IDS)] = False


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map an array of Cityscapes label ids (uint8) to train ids, 255 = ignore."""
    return TRAIN_ID_LUT[label_ids]


class CityscapesSource(SourceDataset):
    """Cityscapes images (item id ``city_seq_frame``, label -1) with label maps resized to ``size`` (nearest).

    ``labels`` is ``fine``, ``coarse``, a list such as ``[fine, coarse]`` (the first fills ``Sample.label_map``,
    the others ``Sample.extras["label_map_<kind>"]``), or a mapping split -> one of those.
    """

    format = "cityscapes"
    layout = EXPECTED
    default_splits = ("train", "val")

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.size = parse_size(self.cfg.get("size", [320, 640]), "size")
        labels = self.cfg.get("labels", "fine")
        self._kinds: dict[str, list[str]] = {}
        for split in self._splits:
            value = labels.get(split, "fine") if isinstance(labels, Mapping) else labels
            if split == "train_extra" and not isinstance(labels, Mapping):
                value = "coarse"  # train_extra only has coarse annotations
            kinds = [value] if isinstance(value, str) else list(value)
            if not kinds or any(k not in LABEL_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
                raise IzooError(f"labels must be fine, coarse or a list of them, got {value!r}", None,
                                "set source.labels: fine, coarse or [fine, coarse]")
            self._kinds[split] = kinds
        if not (self.root / "leftImg8bit").is_dir():
            raise IzooError("no leftImg8bit/ folder", self.root, f"use {EXPECTED}")

    def label_kinds(self, split: str) -> list[str]:
        """Annotation kinds loaded for ``split``; the first fills ``label_map``."""
        return list(self._kinds[split])

    def _label_path(self, split: str, image_rel: str, kind: str) -> Path:
        folder = LABEL_KINDS[kind]
        rel = Path(image_rel)
        stem = rel.name[: -len(IMAGE_SUFFIX)]
        return self.root / folder / split / rel.parent.name / f"{stem}_{folder}_labelIds.png"

    def _list(self, split: str) -> Iterable[ItemRef | BadItem]:
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise IzooError(f"split folder {split!r} is missing", image_dir, f"use {EXPECTED}")
        for kind in self._kinds[split]:
            label_dir = self.root / LABEL_KINDS[kind] / split
            if not label_dir.is_dir():
                raise IzooError(f"no {kind} annotations for split {split!r}", label_dir,
                                f"download {LABEL_KINDS[kind]} or change source.labels")
        for city_dir in sorted_dirs(image_dir):
            for path in sorted(city_dir.glob(f"*{IMAGE_SUFFIX}"), key=lambda p: p.name):
                source_id = path.relative_to(self.root).as_posix()
                item_id = path.name[: -len(IMAGE_SUFFIX)]
                missing = [self._label_path(split, source_id, kind) for kind in self._kinds[split]]
                missing = [p for p in missing if not p.is_file()]
                if missing:
                    yield BadItem(split, item_id, source_id,
                                  f"label map missing: {missing[0].relative_to(self.root).as_posix()}")
                else:
                    yield ItemRef(item_id, split, NO_LABEL, source_id)

    def _check_sizes(self, image_path: Path, image_size: tuple[int, int], label_path: Path,
                     label_size: tuple[int, int]) -> None:
        if image_size != label_size:
            raise self.bad(label_path, f"label map of unexpected size {label_size[0]}x{label_size[1]} (WxH), "
                                       f"its image is {image_size[0]}x{image_size[1]}")
        self.check_aspect(image_path, *image_size, "set source.size to the same aspect ratio")

    def _check(self, ref: ItemRef, full: bool) -> None:
        image_path = self.root / ref.source_id
        image_size = check_image_file(image_path, full)
        for kind in self._kinds[ref.split]:
            label_path = self._label_path(ref.split, ref.source_id, kind)
            self._check_sizes(image_path, image_size, label_path, check_image_file(label_path, full))
            if full:
                self._read_label_ids(label_path)

    def _read_label_ids(self, label_path: Path) -> np.ndarray:
        """The label ids of a labelIds PNG as uint8 [H, W]; wrong kind of file or out-of-range ids are bad items."""
        try:
            with Image.open(label_path) as img:
                img.load()
                mode = img.mode
                # a palette PNG keeps its indices, which are the label ids; 16-bit PNGs hold them as integers
                ids = np.asarray(img) if mode in ("L", "P", "I", "I;16") else None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise self.bad(label_path, f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None
        if ids is None:
            raise self.bad(label_path, f"label map is a {mode} image, expected 8-bit label ids (*_labelIds.png)")
        if ids.dtype != np.uint8:
            wide = ids.astype(np.int64)
            if wide.min() < 0 or wide.max() > 255:
                value = int(wide[(wide < 0) | (wide > 255)][0])
                raise self.bad(label_path, f"label id {value} out of range (Cityscapes label ids are 0..33)")
            ids = wide.astype(np.uint8)
        invalid = _INVALID_ID[ids]
        if invalid.any():
            value = int(ids[invalid][0])
            raise self.bad(label_path, f"label id {value} out of range (Cityscapes label ids are 0..33)")
        return ids

    def _load(self, ref: ItemRef) -> Sample:
        image_path = self.root / ref.source_id
        img = open_image(image_path, "RGB")
        height, width = self.size
        maps: dict[str, torch.Tensor] = {}
        for kind in self._kinds[ref.split]:
            label_path = self._label_path(ref.split, ref.source_id, kind)
            if not label_path.is_file():
                raise self.bad(label_path, "label map missing")
            ids = self._read_label_ids(label_path)
            self._check_sizes(image_path, img.size, label_path, (ids.shape[1], ids.shape[0]))
            train_ids = torch.from_numpy(to_train_ids(ids))[None]
            maps[kind] = TF.resize(train_ids, [height, width], interpolation=InterpolationMode.NEAREST_EXACT)[0]
        image = to_float_image(TF.resize(img, [height, width], interpolation=InterpolationMode.BILINEAR,
                                         antialias=True))
        primary, *others = self._kinds[ref.split]
        return Sample(item_id=ref.item_id, label=NO_LABEL, image=image, label_map=maps[primary].contiguous(),
                      extras={f"label_map_{kind}": maps[kind].contiguous() for kind in others})
