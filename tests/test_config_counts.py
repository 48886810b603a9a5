"""config.yaml lists every split of each dataset's official layout: item counts match the paper's Table 1.

Each dataset's source section from config.yaml is read against a generated tree of the official layout at full
count (empty files; listing only, no decoding): CIFAR-10 60,000, Cityscapes 23,473, OmniObject3D 5,914 scenes.
ImageNet-1K's 1,431,167 files are too many to create in a test, so its tree is generated as a directory listing
of the official shape (1,000 wnid folders in train/ and val/, the flat test/ folder) that the reader scans.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from izoo.config import load_config
from izoo.datasets import imagenet as imagenet_module
from izoo.datasets.registry import open_source

REPO = Path(__file__).resolve().parents[1]
#: the paper's Table 1 (SPEC §1): items per INR dataset
TABLE1_ITEMS = {"cifar10": 60_000, "imagenet1k": 1_431_167, "cityscapes": 23_473, "omniobject3d": 5_914}


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(REPO / "config.yaml")


def source_at(config: dict, dataset: str, root: Path) -> dict:
    """The dataset's configured source section, pointed at a generated tree and listing only."""
    return {**config["datasets"][dataset]["source"], "root": str(root), "validate": "none"}


def count_items(source_cfg: dict) -> dict[str, int]:
    source = open_source(source_cfg)
    return {split: len(source.list_items(split)) for split in source.splits()}


def touch_all(paths: list[Path]) -> None:
    for folder in {p.parent for p in paths}:
        folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def test_cifar10_counts(config: dict, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {**{f"data_batch_{k}": 10_000 for k in range(1, 6)}, "test_batch": 10_000}
    for name, n in batches.items():
        batch = {b"batch_label": name.encode(), b"labels": [i % 10 for i in range(n)],
                 b"data": np.zeros((n, 3072), np.uint8), b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{k}".encode() for k in range(10)]}))
    counts = count_items(source_at(config, "cifar10", folder))
    assert counts == {"train": 50_000, "test": 10_000}
    assert sum(counts.values()) == TABLE1_ITEMS["cifar10"]


def cityscapes_tree(root: Path) -> None:
    """Official Cityscapes layout: leftImg8bit/{train,val,train_extra}, gtFine/{train,val}, gtCoarse/{all three}."""
    per_split = {"train": 2_975, "val": 500, "train_extra": 19_998}
    paths = []
    for split, n in per_split.items():
        for k in range(n):
            city, stem = f"city{k % 18:02d}", f"city{k % 18:02d}_{k:06d}_000019"
            paths.append(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            kinds = ["gtCoarse"] if split == "train_extra" else ["gtFine", "gtCoarse"]
            paths += [root / kind / split / city / f"{stem}_{kind}_labelIds.png" for kind in kinds]
    touch_all(paths)


def test_cityscapes_counts_include_train_extra_with_coarse_labels(config: dict, tmp_path: Path) -> None:
    cityscapes_tree(tmp_path)
    cfg = source_at(config, "cityscapes", tmp_path)
    counts = count_items(cfg)
    assert counts == {"train": 2_975, "val": 500, "train_extra": 19_998}
    assert sum(counts.values()) == TABLE1_ITEMS["cityscapes"]
    source = open_source(cfg)
    assert source.label_kinds("train_extra") == ["coarse"]  # train_extra has no fine annotations
    assert source.label_kinds("val") == ["fine", "coarse"]  # both mIoU columns of Table 3 are evaluated


def test_omniobject3d_counts(config: dict, tmp_path: Path) -> None:
    # OmniObject3D: <class>/<class>_<k>/render/transforms.json (+ images) for 5,914 scenes of 190 classes
    paths = [tmp_path / f"class{k % 190:03d}" / f"class{k % 190:03d}_{k:03d}" / "render" / "transforms.json"
             for k in range(TABLE1_ITEMS["omniobject3d"])]
    touch_all(paths)
    cfg = source_at(config, "omniobject3d", tmp_path)
    counts = count_items(cfg)
    assert sum(counts.values()) == TABLE1_ITEMS["omniobject3d"]
    assert len(open_source(cfg).classes()) == 190


class _Entry:
    """The part of ``os.DirEntry`` the readers use."""

    def __init__(self, name: str, is_dir: bool):
        self.name, self._is_dir = name, is_dir

    def is_dir(self) -> bool:
        return self._is_dir

    def is_file(self) -> bool:
        return not self._is_dir


class _Listing:
    def __init__(self, entries: list[_Entry]):
        self.entries = entries

    def __enter__(self) -> list[_Entry]:
        return self.entries

    def __exit__(self, *exc: object) -> None:
        return None


def test_imagenet1k_counts_include_the_flat_test_folder(config: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    wnids = [f"n{k:08d}" for k in range(1000)]
    # ILSVRC2012: 1,281,167 train images (732..1,300 per class), 50 val images per class, 100,000 flat test images
    train_per_class = [1_281 + (1 if k < 167 else 0) for k in range(1000)]
    for split in ("train", "val"):
        for wnid in wnids[:2]:  # real folders where the reader checks is_dir; the rest come from the listing
            (tmp_path / split / wnid).mkdir(parents=True)
    (tmp_path / "test").mkdir()
    listing: dict[Path, list[_Entry]] = {
        tmp_path / "train": [_Entry(w, True) for w in wnids],
        tmp_path / "val": [_Entry(w, True) for w in wnids],
        tmp_path / "test": [_Entry(f"ILSVRC2012_test_{k + 1:08d}.JPEG", False) for k in range(100_000)],
    }
    for k, wnid in enumerate(wnids):
        listing[tmp_path / "train" / wnid] = [_Entry(f"{wnid}_{i}.JPEG", False) for i in range(train_per_class[k])]
        listing[tmp_path / "val" / wnid] = [_Entry(f"ILSVRC2012_val_{k * 50 + i + 1:08d}.JPEG", False)
                                            for i in range(50)]
    real_scandir = os.scandir

    def scandir(path: os.PathLike | str) -> object:
        return _Listing(listing[Path(path)]) if Path(path) in listing else real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    cfg = source_at(config, "imagenet1k", tmp_path)
    source = open_source(cfg)
    counts = {split: len(source.list_items(split)) for split in source.splits()}
    assert counts == {"train": 1_281_167, "val": 50_000, "test": 100_000}
    assert sum(counts.values()) == TABLE1_ITEMS["imagenet1k"]
    test_items = source.list_items("test")
    assert {ref.label for ref in test_items} == {-1}
    assert test_items[0].item_id == "ILSVRC2012_test_00000001"
    assert imagenet_module.DEFAULT_UNLABELLED_SPLITS == ("test",)
