"""Embedded demo data: official layouts, determinism, skip-when-complete, camera conventions."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from izoo.datasets import open_source
from izoo.datasets.cityscapes import VALID_LABEL_IDS
from izoo.datasets.demo import make_cityscapes, make_demo_data, make_scenes


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    make_demo_data(out, seed=3, kinds=["cifar10"], n_per_class=5)
    make_cityscapes(out, seed=3, cities={"train": {"aachen": 2}, "val": {"frankfurt": 1}})
    make_scenes(out, seed=3, classes=("snowman", "tower"), scenes_per_class=1, n_train=3, n_test=2, size=32)
    return out


def test_cifar_pickles_match_the_official_python_format(demo: Path) -> None:
    folder = demo / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".html")) == [
        "batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    with open(folder / "data_batch_1", "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (10, 3072)
    assert isinstance(batch[b"labels"], list) and all(0 <= v < 10 for v in batch[b"labels"])
    assert batch[b"batch_label"] == b"training batch 1 of 5"
    with open(folder / "batches.meta", "rb") as fh:
        meta = pickle.load(fh, encoding="bytes")
    assert len(meta[b"label_names"]) == 10 and meta[b"num_vis"] == 3072
    # like python-2 pickles, latin1 decoding turns the byte keys into str keys (torchvision's loader relies on it)
    with open(folder / "data_batch_1", "rb") as fh:
        latin = pickle.load(fh, encoding="latin1")
    assert set(latin) == {"batch_label", "labels", "data", "filenames"}
    assert np.array_equal(latin["data"], batch[b"data"])


def test_cifar_demo_loads_in_torchvision(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # md5s are those of the real files
    train = tv_cifar.CIFAR10(str(demo), train=True, download=False)
    assert len(train) == 50 and len(train.classes) == 10
    with open(demo / "cifar-10-batches-py" / "data_batch_1", "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    first = np.asarray(train[0][0])  # HWC from channel-planar rows
    assert np.array_equal(first, batch[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar_demo_is_learnable(demo: Path) -> None:
    source = open_source({"format": "cifar10", "root": str(demo)})

    def features_labels(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        refs = source.list_items(split)
        images = torch.stack([source.load(ref).image for ref in refs])
        return torch.nn.functional.avg_pool2d(images, 4).flatten(1), torch.tensor([r.label for r in refs])

    train_x, train_y = features_labels("train")
    test_x, test_y = features_labels("test")
    centroids = torch.stack([train_x[train_y == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(test_x, centroids).argmin(1) == test_y).float().mean()
    # even a nearest-centroid classifier on 8x8 thumbnails, from 5 images per class, is far above chance (0.1)
    assert accuracy > 0.6


def test_cityscapes_demo_uses_real_label_ids(demo: Path) -> None:
    root = demo / "cityscapes"
    images = sorted((root / "leftImg8bit").rglob("*_leftImg8bit.png"))
    assert [p.relative_to(root).as_posix() for p in images] == [
        "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
        "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png",
        "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"]
    for image in images:
        for kind in ("gtFine", "gtCoarse"):
            label = image.parent.parent.parent.parent / kind / image.relative_to(root / "leftImg8bit").parent / \
                image.name.replace("_leftImg8bit", f"_{kind}_labelIds")
            ids = np.asarray(Image.open(label))
            assert ids.shape == (64, 128) and set(np.unique(ids).tolist()) <= VALID_LABEL_IDS
    fine = np.asarray(Image.open(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"))
    assert {7, 23, 1} <= set(np.unique(fine).tolist())  # road, sky, ego vehicle


def test_scene_cameras_see_the_object_at_the_origin(demo: Path) -> None:
    source = open_source({"format": "scenes", "root": str(demo / "scenes"), "train_views": 3, "size": 32})
    refs = source.list_items("train")
    assert [r.item_id for r in refs] == ["snowman_000", "tower_000"]
    for ref in refs:
        scene = source.load(ref).scene
        assert scene.images.shape == (5, 32, 32, 3) and scene.test_views == [3, 4]
        for view in range(5):
            c2w = scene.poses[view].double()
            assert abs(float(c2w[:3, 3].norm()) - 4.0) < 1e-5  # cameras on a sphere of radius 4
            cam = c2w[:3, :3].T @ (-c2w[:3, 3])  # the origin in camera coordinates (camera looks down -z)
            u = scene.focal * cam[0] / -cam[2] + scene.width / 2
            v = -scene.focal * cam[1] / -cam[2] + scene.height / 2
            centre = scene.images[view, int(v), int(u)]
            assert centre.min() < 0.97  # the object, not the white background
            assert torch.all(scene.images[view, 0, 0] > 0.99)  # corners are background


def test_demo_is_deterministic_and_skips_when_complete(tmp_path: Path) -> None:
    first = make_demo_data(tmp_path / "a", seed=5, kinds=["cifar10"], n_per_class=5)
    make_demo_data(tmp_path / "b", seed=5, kinds=["cifar10"], n_per_class=5)
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert a == b and ".izoo-demo-cifar10.json" in a
    mtimes = {p: p.stat().st_mtime_ns for p in first["cifar10"].iterdir()}
    make_demo_data(tmp_path / "a", seed=5, kinds=["cifar10"], n_per_class=5)
    assert {p: p.stat().st_mtime_ns for p in first["cifar10"].iterdir()} == mtimes
    make_demo_data(tmp_path / "a", seed=6, kinds=["cifar10"], n_per_class=5)  # other settings: regenerated
    assert _tree_bytes(tmp_path / "a") != a


def test_scene_rendering_is_deterministic(tmp_path: Path) -> None:
    kwargs = dict(seed=1, classes=("molecule",), scenes_per_class=1, n_train=2, n_test=1, size=16)
    make_scenes(tmp_path / "a", **kwargs)
    make_scenes(tmp_path / "b", **kwargs)
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")
    alpha = np.asarray(Image.open(tmp_path / "a/scenes/molecule/molecule_000/train/r_0.png"))[..., 3]
    assert alpha.max() == 255 and alpha.min() == 0  # RGBA with a real alpha channel
