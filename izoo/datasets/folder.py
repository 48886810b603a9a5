"""A generic image-folder reader for users' own data: ``<root>/<split>/<class>/*.png|jpg``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from izoo.datasets.base import (BadItem, ItemRef, Sample, SourceDataset, check_image_file, open_image, parse_size,
                                sorted_dirs, sorted_images, to_float_image)
from izoo.errors import BadItemError, IzooError

EXPECTED = "an image folder: <root>/<split>/<class>/*.png|jpg (one folder per class, the same classes in every split)"


class FolderSource(SourceDataset):
    """Images by class folder; item id ``<split>/<class>/<stem>``; label = index of the class in sorted order.

    With ``size`` every image is resized to it; without, all images of a split must share one size.
    """

    format = "folder"
    layout = EXPECTED
    default_splits = ("train", "test")

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.size = parse_size(self.cfg.get("size"), "size")
        names: set[str] = set()
        for split in self._splits:
            split_dir = self.root / split
            if not split_dir.is_dir():
                raise IzooError(f"split folder {split!r} is missing", split_dir, f"use {EXPECTED}")
            names.update(d.name for d in sorted_dirs(split_dir))
        self._class_names = sorted(names)
        if not self._class_names:
            raise IzooError("no class folders", self.root / self._splits[0], f"use {EXPECTED}")
        self._label = {name: k for k, name in enumerate(self._class_names)}
        self._split_size: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def classes(self) -> dict[int, str]:
        """Label → class folder name."""
        return dict(enumerate(self._class_names))

    def _list(self, split: str) -> Iterable[ItemRef | BadItem]:
        split_dir = self.root / split
        loose = sorted_images(split_dir)
        if loose:
            raise IzooError(f"{len(loose)} images lie directly in {split}/ (e.g. {loose[0].name}), not in class folders",
                            split_dir, f"use {EXPECTED}")
        for class_dir in sorted_dirs(split_dir):
            for path in sorted_images(class_dir):
                yield ItemRef(f"{split}/{class_dir.name}/{path.stem}", split, self._label[class_dir.name],
                              path.relative_to(self.root).as_posix())

    def _expected_size(self, split: str) -> tuple[int, int] | None:
        """(width, height) all images of ``split`` must have: None with ``size`` set, else the first item's."""
        if self.size is not None:
            return None
        with self._lock:
            if split not in self._split_size:
                first = self.list_items(split)[0]
                try:
                    self._split_size[split] = check_image_file(self.root / first.source_id, full=False)
                except BadItemError as exc:
                    raise IzooError(f"the first image of split {split!r} is unreadable, so the split's image size "
                                    f"is unknown ({exc.what})", self.root / first.source_id,
                                    "set source.size, or replace the file") from None
            return self._split_size[split]

    def _check(self, ref: ItemRef, full: bool) -> None:
        size = check_image_file(self.root / ref.source_id, full)
        self._check_size(ref, size)

    def _check_size(self, ref: ItemRef, size: tuple[int, int]) -> None:
        expected = self._expected_size(ref.split)
        if expected is not None and tuple(size) != tuple(expected):
            raise self.bad(self.root / ref.source_id,
                           f"image of unexpected size {size[0]}x{size[1]} (WxH), the split's images are "
                           f"{expected[0]}x{expected[1]}", "set source.size to resize all images, or fix the file")

    def _load(self, ref: ItemRef) -> Sample:
        path = self.root / ref.source_id
        class_name = Path(ref.source_id).parent.name
        if class_name not in self._label:
            raise IzooError(f"class folder {class_name!r} is not among the classes found at start", path,
                            "rebuild the manifest")
        img = open_image(path, "RGB")
        if self.size is None:
            self._check_size(ref, img.size)
        elif (img.height, img.width) != self.size:
            img = TF.resize(img, list(self.size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        return Sample(item_id=ref.item_id, label=self._label[class_name], image=to_float_image(img))
