"""The common interface of all source-dataset readers: item references, samples, scenes, bad-item handling."""

from __future__ import annotations

import abc
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from izoo.errors import BadItemError, IzooError

log = logging.getLogger(__name__)

#: label of items that carry no image-level class (segmentation images); matches the archive layout
NO_LABEL = -1
ON_BAD_ITEM = ("error", "skip")
#: how much of a source is checked when a manifest is built: ``header`` (cheap: header, size, end marker),
#: ``full`` (decode every file) or ``none`` (listing only)
VALIDATE_MODES = ("header", "full", "none")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


@dataclass(frozen=True)
class ItemRef:
    """Where one item of a source dataset lives; also the identity columns of a manifest row."""

    item_id: str
    split: str
    label: int
    source_id: str


@dataclass
class Scene:
    """A multi-view scene: views composited on white with camera-to-world poses (NeRF/Blender convention)."""

    images: torch.Tensor  # [V, H, W, 3] float32 in [0, 1]
    poses: torch.Tensor  # [V, 4, 4] float32 camera-to-world, camera looks down -z, y up
    focal: float  # pixels, at the (resized) image size
    height: int
    width: int
    train_views: list[int]
    test_views: list[int]
    label: int
    class_name: str


@dataclass
class Sample:
    """One loaded item: an image (2D), optionally a label map (segmentation), or a scene (3D)."""

    item_id: str
    label: int
    image: torch.Tensor | None = None  # [3, H, W] float32 in [0, 1]
    label_map: torch.Tensor | None = None  # [H, W] uint8 train ids, 255 = ignore
    scene: Scene | None = None
    #: further per-item arrays to keep beside the INR (e.g. ``label_map_coarse``), stored as archive extras
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class BadItem:
    """An item left out of a manifest because it could not be read or failed a check."""

    split: str
    item_id: str
    source_id: str
    error: str

    def as_dict(self) -> dict[str, str]:
        """The JSON/CSV row of this bad item."""
        return {"split": self.split, "item_id": self.item_id, "source_id": self.source_id, "error": self.error}


def ref_from(ref: ItemRef | Mapping[str, Any]) -> ItemRef:
    """An ``ItemRef`` from an ``ItemRef``, a dict or a manifest row (pandas Series)."""
    if isinstance(ref, ItemRef):
        return ref
    try:
        return ItemRef(item_id=str(ref["item_id"]), split=str(ref["split"]), label=int(ref["label"]),
                       source_id=str(ref["source_id"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise IzooError(f"not an item reference (needs item_id, split, label, source_id): {exc!r}", None,
                        "pass an ItemRef or a manifest row") from exc


class SourceDataset(abc.ABC):
    """A dataset on disk in its official layout: splits, a stable item listing, and per-item loading.

    Subclasses implement ``_list(split)`` (yielding refs, or ``BadItem`` for items found bad while listing),
    ``_check(ref, full)`` (a cheap per-item validation) and ``_load(ref)``.
    """

    format: str = ""
    #: the expected on-disk layout, in words, for error messages
    layout: str = ""
    #: splits used when the config names none
    default_splits: tuple[str, ...] = ("train", "test")
    #: False where listing already checks every item (CIFAR's in-memory arrays): scan then skips ``_check``
    checks_items: bool = True

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = dict(cfg)
        if "root" not in self.cfg:
            raise IzooError(f"source config of format {self.format!r} has no 'root'", None,
                            "set source.root to the dataset directory")
        self.root = Path(os.path.expanduser(str(self.cfg["root"])))
        self.on_bad_item = str(self.cfg.get("on_bad_item", "error"))
        if self.on_bad_item not in ON_BAD_ITEM:
            raise IzooError(f"on_bad_item must be one of {ON_BAD_ITEM}, got {self.on_bad_item!r}", None,
                            "set source.on_bad_item to error or skip")
        self.validate_mode = str(self.cfg.get("validate", "header"))
        if self.validate_mode not in VALIDATE_MODES:
            raise IzooError(f"validate must be one of {VALIDATE_MODES}, got {self.validate_mode!r}", None,
                            "set source.validate to header, full or none")
        max_items = self.cfg.get("max_items")
        self.max_items = None if max_items is None else int(max_items)
        self._splits = [str(s) for s in (self.cfg.get("splits") or self.default_splits)]
        self._listed: dict[str, tuple[list[ItemRef], list[BadItem]]] = {}
        if not self.root.is_dir():
            what = "does not exist" if not self.root.exists() else "is not a directory"
            raise IzooError(f"dataset root {what}", self.root,
                            f"point source.root at the {self.format} dataset directory")

    # ---- public interface -------------------------------------------------------------------------------

    def splits(self) -> list[str]:
        """The configured split names, in manifest order."""
        return list(self._splits)

    def classes(self) -> dict[int, str]:
        """Class label → class name (empty when items carry no class)."""
        return {}

    def list_items(self, split: str) -> list[ItemRef]:
        """Items of ``split`` in a stable order; bad items found while listing are skipped or raised."""
        return list(self._listing(split)[0])

    def bad_items(self, split: str) -> list[BadItem]:
        """Items of ``split`` that listing found bad and skipped (``on_bad_item: skip``)."""
        return list(self._listing(split)[1])

    def validate(self, ref: ItemRef | Mapping[str, Any]) -> None:
        """Cheaply check one item (file header, size, end marker); raise ``BadItemError`` if it is bad."""
        if self.validate_mode == "none":
            return
        self._check(ref_from(ref), full=self.validate_mode == "full")

    def scan(self, split: str, workers: int = 8) -> tuple[list[ItemRef], list[BadItem]]:
        """List and validate ``split``: the good items in order and the bad ones (skip) or the first error."""
        refs, listed_bad = self._listing(split)
        bad = list(listed_bad)
        if self.checks_items and self.validate_mode != "none":
            good = self._validated(refs, bad, workers)
        else:
            good = list(refs)
        if not good:
            raise IzooError(f"split {split!r} has no usable items" + (f" ({len(bad)} bad)" if bad else ""),
                            self.root, "check source.root and source.splits (and the bad-item report)")
        return good, bad

    def _validated(self, refs: list[ItemRef], bad: list[BadItem], workers: int) -> list[ItemRef]:
        """The refs that pass ``validate``, in order; bad ones are appended to ``bad`` (skip) or raised (error)."""
        good: list[ItemRef] = []
        # validation is I/O bound (file headers, possibly on a network filesystem), so threads help; chunks keep
        # the number of pending futures small for million-item datasets
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for start in range(0, len(refs), 4096):
                chunk = refs[start:start + 4096]
                for ref, error in zip(chunk, pool.map(self._validate_quietly, chunk)):
                    if error is None:
                        good.append(ref)
                    elif self.on_bad_item == "error":
                        raise error
                    else:
                        log.warning("skipping bad item: %s", error)
                        bad.append(BadItem(ref.split, ref.item_id, ref.source_id, error.what))
        return good

    def load(self, ref: ItemRef | Mapping[str, Any]) -> Sample:
        """Load one item (an ``ItemRef`` or a manifest row); a bad item raises ``BadItemError``."""
        ref = ref_from(ref)
        sample = self._load(ref)
        if sample.label != ref.label:
            raise IzooError(f"item {ref.item_id} has label {sample.label} on disk but {ref.label} in the manifest",
                            self.item_path(ref.source_id),
                            "the source changed since the manifest was built: rebuild the manifest")
        return sample

    def item_path(self, source_id: str) -> Path:
        """The file (or folder) an item's ``source_id`` points at, for error messages."""
        return self.root / source_id.split("#")[0]

    # ---- for subclasses ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def _list(self, split: str) -> Iterable[ItemRef | BadItem]:
        """Yield the items of ``split`` in stable order; ``BadItem`` for items found bad while listing."""

    @abc.abstractmethod
    def _check(self, ref: ItemRef, full: bool) -> None:
        """Raise ``BadItemError`` if the item is bad; ``full`` decodes it completely."""

    @abc.abstractmethod
    def _load(self, ref: ItemRef) -> Sample:
        """Load one item."""

    def check_aspect(self, path: Path, width: int, height: int, fix: str) -> None:
        """Raise ``bad`` when a ``width``×``height`` image's aspect ratio differs (> 1 %) from ``source.size`` (H, W)."""
        target_h, target_w = self.size
        if abs(width * target_h - height * target_w) > 0.01 * width * target_h:
            raise self.bad(path, f"image of unexpected size {width}x{height} (WxH): aspect ratio differs from "
                                 f"source.size {target_h}x{target_w} (HxW)", fix)

    def fix_after_manifest(self) -> str:
        """The fix for an item that passed the manifest build but fails to load when it is fitted.

        ``on_bad_item: skip`` alone cannot help then: only a manifest build leaves items out, and the default
        header check does not decode every file (e.g. Cityscapes label ids), so the fix names every setting needed.
        """
        settings = "source.on_bad_item: skip"
        if self.checks_items and self.validate_mode != "full":
            settings += " and source.validate: full (the manifest's default check does not decode every file)"
        return ("replace or repair the file (it changed after the manifest was built, or the manifest's check did "
                f"not read it), or leave the item out: set {settings} and rebuild the manifest (the workflow rebuilds "
                "it and refits the dataset when source: changes; by hand: izoo manifest, then izoo fit again)")

    def bad(self, path: str | Path, what: str, fix: str | None = None) -> BadItemError:
        """A ``BadItemError`` for one item file."""
        return BadItemError(what, path, fix or "replace or remove the file, or set source.on_bad_item: skip")

    def _validate_quietly(self, ref: ItemRef) -> BadItemError | None:
        try:
            self.validate(ref)
        except BadItemError as exc:
            return exc
        return None

    def _listing(self, split: str) -> tuple[list[ItemRef], list[BadItem]]:
        if split not in self._splits:
            raise IzooError(f"unknown split {split!r} (configured: {self._splits})", self.root,
                            "use one of source.splits")
        if split not in self._listed:
            refs: list[ItemRef] = []
            bad: list[BadItem] = []
            seen: set[str] = set()
            for entry in self._list(split):
                if isinstance(entry, BadItem):
                    if self.on_bad_item == "error":
                        raise BadItemError(entry.error, self.item_path(entry.source_id),
                                           "replace or remove it, or set source.on_bad_item: skip")
                    log.warning("skipping bad item %s: %s", entry.source_id, entry.error)
                    bad.append(entry)
                    continue
                if entry.item_id in seen:
                    raise IzooError(f"two items share the id {entry.item_id!r}", self.root / entry.source_id,
                                    "item ids must be unique: rename one of the files")
                seen.add(entry.item_id)
                refs.append(entry)
                if self.max_items is not None and len(refs) >= self.max_items:
                    break
            if not refs:
                raise IzooError(f"split {split!r} is empty" + (f" (all {len(bad)} items bad)" if bad else ""),
                                self.root, f"check source.root and source.splits; expected {self.layout}")
            self._listed[split] = (refs, bad)
        return self._listed[split]


# ---- shared image helpers -----------------------------------------------------------------------------------

#: how far from the end of a file its end-of-image marker may lie (JPEGs may carry trailing padding)
_TAIL_BYTES = 4096


#: end-of-image marker of the formats that have one, by PIL format name
_END_MARKERS = {"PNG": b"IEND", "JPEG": b"\xff\xd9", "MPO": b"\xff\xd9"}


def _has_end_marker(path: Path, image_format: str | None) -> bool | None:
    """Whether a PNG/JPEG file holds its end-of-image marker near its end; None for other formats.

    PIL's ``Image.open`` reads only the header, and finding a truncated file otherwise takes a full decode
    (~10 ms per ImageNet JPEG, hours over 1.4 M files), so the end marker is checked by hand instead.
    """
    marker = _END_MARKERS.get(image_format or "")
    if marker is None:
        return None
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - _TAIL_BYTES))
        return marker in fh.read()


def _bad_file(path: Path, what: str) -> BadItemError:
    return BadItemError(what, path, "replace or remove the file, or set source.on_bad_item: skip")


def check_image_file(path: Path, full: bool) -> tuple[int, int]:
    """Check an image file cheaply (header, end marker) or fully (decode); return its (width, height)."""
    if not path.is_file():
        raise _bad_file(path, "file is missing")
    try:
        with Image.open(path) as img:
            size, image_format = img.size, img.format
            if full:
                img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _bad_file(path, f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    if not full:
        # by the format found in the header, not the suffix: ImageNet has PNG files named .JPEG
        ends = _has_end_marker(path, image_format)
        if ends is False:
            raise _bad_file(path, f"truncated image (no {image_format} end-of-image marker)")
        if ends is None:
            # formats without an end marker get a full decode: they are rare in image datasets
            return check_image_file(path, True)
    return size


def open_image(path: Path, mode: str) -> Image.Image:
    """Decode an image file fully into PIL ``mode``; a corrupt or truncated file raises ``BadItemError``."""
    if not path.is_file():
        raise _bad_file(path, "file is missing")
    try:
        with Image.open(path) as img:
            img.load()
            if mode == "RGB" and ("A" in img.getbands() or "transparency" in img.info):
                # transparent pixels hold arbitrary colours: put them on white, as the 3D scenes are
                white = Image.new("RGBA", img.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
            return img.convert(mode) if img.mode != mode else img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _bad_file(path, f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None


def parse_size(value: Any, what: str) -> tuple[int, int] | None:
    """A configured (height, width) from an int (square) or a [height, width] pair; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise IzooError(f"{what} must be an int or [height, width], got {value!r}", None, f"fix source.{what}")


def sorted_dirs(path: Path) -> list[Path]:
    """Sub-directories of ``path`` in a stable (name) order, hidden ones left out."""
    # scandir's entries know their type without a stat per file, which matters over 1.4 M ImageNet files
    with os.scandir(path) as entries:
        names = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    return [path / name for name in sorted(names)]


def sorted_image_names(path: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[str]:
    """Names of the image files directly in ``path`` in a stable order, hidden ones left out.

    Names, not paths: building 1.4 M ``Path`` objects costs more than the ImageNet directory scan itself.
    """
    with os.scandir(path) as entries:
        names = [e.name for e in entries if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower()
                 in suffixes and e.is_file()]
    return sorted(names)


def sorted_images(path: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files directly in ``path`` in a stable (name) order, hidden ones left out."""
    return [path / name for name in sorted_image_names(path, suffixes)]


def to_float_image(img: Image.Image) -> torch.Tensor:
    """A PIL RGB (or RGBA) image as a contiguous [C, H, W] float32 tensor in [0, 1] (pixel / 255)."""
    # one strided copy into planar float32: converting the HWC uint8 view in torch costs several passes
    planar = np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(planar).div_(255.0)
