"""ImageNet-1K (ILSVRC folder layout ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``, flat ``test/*.JPEG``) and
class subsets such as ImageNet-100."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from izoo.datasets.base import (NO_LABEL, BadItem, ItemRef, Sample, SourceDataset, check_image_file, open_image, sorted_dirs,
                                sorted_image_names, to_float_image)
from izoo.errors import IzooError

EXPECTED = ("the ILSVRC folder layout: <root>/<split>/<wnid>/*.JPEG (validation images sorted into wnid folders), "
            "unlabelled splits flat: <root>/test/*.JPEG")
_SUFFIXES = (".jpeg", ".jpg", ".png")
#: splits that ILSVRC ships as one flat folder without labels (the 100,000 test images); their items get label -1
DEFAULT_UNLABELLED_SPLITS = ("test",)


def read_class_list(value: Any, root: Path) -> list[str]:
    """Wnids from a list, or from a text file (one wnid per line, first token) or JSON list file."""
    if isinstance(value, (list, tuple)):
        wnids = [str(v).strip() for v in value]
    else:
        path = Path(str(value)).expanduser()
        if not path.is_absolute() and not path.exists():
            path = root / path
        if not path.is_file():
            raise IzooError("class list file not found", path, "set source.class_list to a file of wnids or a list")
        text = path.read_text()
        if path.suffix == ".json":
            wnids = [str(v).strip() for v in json.loads(text)]
        else:
            wnids = [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not wnids:
        raise IzooError("class list is empty", None, "list the wnids of the subset in source.class_list")
    if len(set(wnids)) != len(wnids):
        raise IzooError("class list repeats a wnid", None, "remove the duplicate wnids from source.class_list")
    return sorted(wnids)


class ImageNetSource(SourceDataset):
    """ImageNet folders: item id = file stem, label = index of the wnid in sorted order; resize 256, crop 224.

    Splits in ``unlabelled_splits`` (default ``[test]``) are flat folders of images whose items carry label -1:
    they are fitted and archived like the others (the paper's 1,431,167 ImageNet-1K INRs include the 100k test
    images) and left out of classification, which needs labels.
    """

    format = "imagenet"
    layout = EXPECTED
    default_splits = ("train", "val")

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.resize = int(self.cfg.get("resize", 256))
        self.crop = int(self.cfg.get("crop", 224))
        if self.crop > self.resize:
            raise IzooError(f"crop {self.crop} is larger than resize {self.resize}", None,
                            "set source.crop <= source.resize")
        self.unlabelled = {str(s) for s in self.cfg.get("unlabelled_splits", DEFAULT_UNLABELLED_SPLITS)}
        for split in self._splits:
            self._split_dir(split)
        labelled = [s for s in self._splits if s not in self.unlabelled]
        if self.cfg.get("class_list") is not None:
            self.wnids = read_class_list(self.cfg["class_list"], self.root)
        elif labelled:
            self.wnids = [d.name for d in sorted_dirs(self._split_dir(labelled[0]))]
        else:
            self.wnids = []
        if labelled and not self.wnids:
            raise IzooError(f"no class folders in split {labelled[0]!r}", self._split_dir(labelled[0]),
                            f"use {EXPECTED}")
        self._label = {wnid: k for k, wnid in enumerate(self.wnids)}

    def _split_dir(self, split: str) -> Path:
        path = self.root / split
        if not path.is_dir():
            raise IzooError(f"split folder {split!r} is missing", path, f"use {EXPECTED}")
        return path

    def classes(self) -> dict[int, str]:
        """Label → wnid."""
        return dict(enumerate(self.wnids))

    def _list(self, split: str) -> Iterable[ItemRef | BadItem]:
        split_dir = self._split_dir(split)
        loose = sorted_image_names(split_dir, _SUFFIXES)
        if split in self.unlabelled:
            folders = sorted_dirs(split_dir)
            if folders and not loose:
                raise IzooError(f"unlabelled split {split!r} holds class folders (e.g. {folders[0].name}/), "
                                "not a flat folder of images", split_dir,
                                f"remove {split!r} from source.unlabelled_splits, or flatten the folder")
            for name in loose:
                yield ItemRef(os.path.splitext(name)[0], split, NO_LABEL, f"{split}/{name}")
            return
        if loose:
            raise IzooError(f"{len(loose)} images lie directly in {split}/ instead of <wnid>/ folders "
                            f"(e.g. {loose[0]})", split_dir,
                            "sort the validation images into wnid folders (the ILSVRC2012 valprep.sh script does)")
        present = {d.name for d in sorted_dirs(split_dir)}
        if self.cfg.get("class_list") is None:
            extra = sorted(present - set(self.wnids))
            if extra:
                raise IzooError(f"class folders {extra[:3]} are not in the first labelled split", split_dir,
                                "make every split hold the same wnid folders, or set source.class_list")
        missing = [w for w in self.wnids if w not in present]
        if missing:
            raise IzooError(f"{len(missing)} class folders missing (e.g. {missing[0]})", split_dir,
                            "check source.class_list against the folders on disk")
        for wnid in self.wnids:
            label = self._label[wnid]
            for name in sorted_image_names(split_dir / wnid):
                yield ItemRef(os.path.splitext(name)[0], split, label, f"{split}/{wnid}/{name}")

    def _check(self, ref: ItemRef, full: bool) -> None:
        check_image_file(self.root / ref.source_id, full)

    def _load(self, ref: ItemRef) -> Sample:
        path = self.root / ref.source_id
        img = open_image(path, "RGB")
        img = TF.resize(img, self.resize, interpolation=InterpolationMode.BILINEAR, antialias=True)
        img = TF.center_crop(img, [self.crop, self.crop])
        if ref.split in self.unlabelled:
            return Sample(item_id=ref.item_id, label=NO_LABEL, image=to_float_image(img))
        wnid = Path(ref.source_id).parent.name
        if wnid not in self._label:
            raise IzooError(f"class {wnid!r} of item {ref.item_id} is not among the configured classes", path,
                            "rebuild the manifest")
        return Sample(item_id=ref.item_id, label=self._label[wnid], image=to_float_image(img))


__all__ = ["ImageNetSource", "read_class_list"]
