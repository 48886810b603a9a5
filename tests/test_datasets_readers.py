"""Each source reader on small generated fixtures in its official layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from izoo.datasets import ItemRef, open_source
from izoo.datasets import cifar10 as cifar_module
from izoo.datasets.cityscapes import TRAIN_ID_LUT
from izoo.datasets.demo import make_cifar10, make_cityscapes, make_scenes
from izoo.errors import IzooError


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _noise(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cifar")
    make_cifar10(out, seed=0, n_per_class=5, n_test_per_class=1)
    return out


def test_cifar_reader_lists_and_loads(cifar_root: Path) -> None:
    source = open_source({"format": "cifar10", "root": str(cifar_root / "cifar-10-batches-py")})
    assert source.splits() == ["train", "test"] and len(source.classes()) == 10
    train = source.list_items("train")
    assert len(train) == 50 and train[0] == ItemRef("data_batch_1_00000", "train", train[0].label, "data_batch_1#0")
    assert [r.item_id for r in train] == [r.item_id for r in source.list_items("train")]  # stable
    assert len(source.list_items("test")) == 10
    import pickle

    with open(cifar_root / "cifar-10-batches-py" / "data_batch_2", "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    ref = next(r for r in train if r.source_id == "data_batch_2#3")
    sample = source.load(ref)
    assert sample.image.shape == (3, 32, 32) and sample.image.dtype == torch.float32
    expected = torch.from_numpy(batch[b"data"][3].reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.equal(sample.image, expected) and sample.label == batch[b"labels"][3]


def test_cifar_reader_unpickles_each_batch_once(cifar_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = cifar_module._unpickle
    monkeypatch.setattr(cifar_module, "_unpickle", lambda path: calls.append(path) or real(path))
    cifar_module._load_batch_cached.cache_clear()
    source = open_source({"format": "cifar10", "root": str(cifar_root), "splits": ["train"]})
    for ref in source.list_items("train")[:12]:
        source.load(ref)
    batch_reads = [p for p in calls if p.name.startswith("data_batch")]
    assert len(batch_reads) == 5  # listing read each batch once; loads reuse the cached arrays


def test_cifar_max_items(cifar_root: Path) -> None:
    source = open_source({"format": "cifar10", "root": str(cifar_root), "max_items": 7})
    assert len(source.list_items("train")) == 7 and len(source.list_items("test")) == 7


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for wnid in ("n01440764", "n01443537", "n02102040"):
            for k in range(n):
                stem = f"{wnid}_{k}" if split == "train" else f"ILSVRC2012_val_{wnid[-3:]}{k}"
                _save(root / split / wnid / f"{stem}.JPEG", _noise(rng, 30 + 7 * k, 45), format="JPEG")
    (root / "imagenet100.txt").write_text("n02102040\nn01440764\n")
    return root


def test_imagenet_reader_resizes_and_center_crops(imagenet_root: Path) -> None:
    source = open_source({"format": "imagenet", "root": str(imagenet_root), "resize": 20, "crop": 16})
    assert source.classes() == {0: "n01440764", 1: "n01443537", 2: "n02102040"}
    train = source.list_items("train")
    assert len(train) == 9 and train[0] == ItemRef("n01440764_0", "train", 0, "train/n01440764/n01440764_0.JPEG")
    assert len(source.list_items("val")) == 3
    sample = source.load(train[4])
    assert sample.image.shape == (3, 16, 16) and 0 <= float(sample.image.min()) <= float(sample.image.max()) <= 1
    # torchvision's classic ImageNet eval transform gives the same pixels
    from torchvision import transforms

    reference = transforms.Compose([transforms.Resize(20), transforms.CenterCrop(16), transforms.ToTensor()])
    with Image.open(imagenet_root / train[4].source_id) as img:
        assert torch.allclose(sample.image, reference(img.convert("RGB")), atol=1e-6)


def test_imagenet_quirks_png_named_jpeg_and_cmyk(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    _save(tmp_path / "train" / "n02105855" / "n02105855_2933.JPEG", _noise(rng, 20, 30), format="PNG")
    cmyk = Image.fromarray(_noise(rng, 20, 30, 4), mode="CMYK")
    (tmp_path / "train" / "n02105855").mkdir(parents=True, exist_ok=True)
    cmyk.save(tmp_path / "train" / "n02105855" / "n02105855_0001.JPEG", format="JPEG")
    source = open_source({"format": "imagenet", "root": str(tmp_path), "splits": ["train"], "resize": 16,
                          "crop": 16})
    refs, bad = source.scan("train")
    assert len(refs) == 2 and bad == []
    assert all(source.load(ref).image.shape == (3, 16, 16) for ref in refs)


def test_imagenet_class_subset(imagenet_root: Path) -> None:
    source = open_source({"format": "imagenet", "root": str(imagenet_root), "class_list": "imagenet100.txt",
                          "resize": 20, "crop": 16})
    assert source.classes() == {0: "n01440764", 1: "n02102040"}
    assert {r.label for r in source.list_items("val")} == {0, 1} and len(source.list_items("train")) == 6


def test_cityscapes_reader_maps_train_ids_and_resizes(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path, seed=1, cities={"train": {"aachen": 2}, "val": {"lindau": 1}})
    source = open_source({"format": "cityscapes", "root": str(root), "size": [32, 64]})
    train = source.list_items("train")
    assert [r.item_id for r in train] == ["aachen_000000_000019", "aachen_000001_000019"] and train[0].label == -1
    sample = source.load(train[0])
    assert sample.image.shape == (3, 32, 64) and sample.label_map.shape == (32, 64)
    assert sample.label_map.dtype == torch.uint8
    ids = np.asarray(Image.open(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"))
    # nearest-neighbour 2x downsampling of the mapped label ids
    assert torch.equal(sample.label_map, torch.from_numpy(TRAIN_ID_LUT[ids][1::2, 1::2]))
    assert set(sample.label_map.unique().tolist()) <= set(range(19)) | {255}
    coarse = open_source({"format": "cityscapes", "root": str(root), "size": [32, 64], "labels": "coarse"})
    coarse_map = coarse.load(train[0]).label_map
    assert (coarse_map == 255).sum() > (sample.label_map == 255).sum()  # coarse leaves boundaries unlabelled
    both = open_source({"format": "cityscapes", "root": str(root), "size": [32, 64], "labels": ["fine", "coarse"]})
    both_sample = both.load(train[0])
    assert torch.equal(both_sample.label_map, sample.label_map)
    assert list(both_sample.extras) == ["label_map_coarse"] and torch.equal(both_sample.extras["label_map_coarse"],
                                                                             coarse_map)


def _write_scene(scene_dir: Path, n_views: int, size: int, rng: np.random.Generator, with_ext: bool) -> None:
    frames = []
    for k in range(n_views):
        rgba = _noise(rng, size, size, 4)
        _save(scene_dir / "images" / f"r_{k}.png", rgba)
        pose = np.eye(4)
        pose[:3, 3] = [0, 0, 4.0 + k]
        frames.append({"file_path": f"images/r_{k}" + (".png" if with_ext else ""), "transform_matrix": pose.tolist()})
    (scene_dir / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.5, "frames": frames}))


def test_scenes_reader_single_transforms_file_and_render_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write_scene(tmp_path / "toy_car" / "toy_car_001" / "render", 4, 16, rng, with_ext=True)  # OmniObject3D
    _write_scene(tmp_path / "toy_car" / "toy_car_002" / "render", 4, 16, rng, with_ext=False)
    _write_scene(tmp_path / "apple" / "apple_001" / "render", 4, 16, rng, with_ext=True)
    source = open_source({"format": "scenes", "root": str(tmp_path), "size": 8, "train_views": 3})
    assert source.classes() == {0: "apple", 1: "toy_car"}
    refs = source.list_items("train")
    assert [(r.item_id, r.label, r.source_id) for r in refs] == [
        ("apple_001", 0, "apple/apple_001"), ("toy_car_001", 1, "toy_car/toy_car_001"),
        ("toy_car_002", 1, "toy_car/toy_car_002")]
    scene = source.load(refs[1]).scene
    assert scene.images.shape == (4, 8, 8, 3) and scene.train_views == [0, 1, 2] and scene.test_views == [3]
    assert scene.class_name == "toy_car" and scene.label == 1
    assert scene.focal == pytest.approx(0.5 * 16 / np.tan(0.25) * 8 / 16)
    assert float(scene.poses[2, 2, 3]) == 6.0
    # white compositing: a fully transparent pixel is white whatever its colour
    with Image.open(tmp_path / "toy_car/toy_car_001/render/images/r_0.png") as img:
        rgba = np.asarray(img).astype(np.float64) / 255
    composite = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    full = open_source({"format": "scenes", "root": str(tmp_path), "size": 16, "train_views": 3})
    assert np.allclose(full.load(refs[1]).scene.images[0].numpy(), composite, atol=1e-6)


def test_folder_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("dog", "cat"):
            for k in range(2):
                _save(tmp_path / split / cls / f"img{k}.png", _noise(rng, 12, 10))
    _save(tmp_path / "train" / "cat" / "extra.jpg", _noise(rng, 12, 10), format="JPEG")
    source = open_source({"format": "folder", "root": str(tmp_path)})
    assert source.classes() == {0: "cat", 1: "dog"}
    train = source.list_items("train")
    assert [r.item_id for r in train] == ["train/cat/extra", "train/cat/img0", "train/cat/img1", "train/dog/img0",
                                          "train/dog/img1"]
    sample = source.load(train[1])
    with Image.open(tmp_path / "train/cat/img0.png") as img:
        assert torch.allclose(sample.image, torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255, atol=1e-7)
    resized = open_source({"format": "folder", "root": str(tmp_path), "size": [6, 5]})
    assert resized.load(train[0]).image.shape == (3, 6, 5)
    transparent = np.zeros((12, 10, 4), dtype=np.uint8)
    transparent[..., 0] = 200  # red, but fully transparent
    _save(tmp_path / "train" / "dog" / "img1.png", transparent)
    assert torch.equal(source.load(train[4]).image, torch.ones(3, 12, 10))  # composited on white


def test_load_accepts_manifest_rows(cifar_root: Path) -> None:
    source = open_source({"format": "cifar10", "root": str(cifar_root)})
    ref = source.list_items("test")[3]
    row = pd.Series({"index": 53, "split": "test", "item_id": ref.item_id, "label": ref.label,
                     "source_id": ref.source_id, "shard": "test-00000"})
    assert torch.equal(source.load(row).image, source.load(ref).image)
    wrong = dict(row, label=(ref.label + 1) % 10)
    with pytest.raises(IzooError, match="rebuild the manifest"):
        source.load(wrong)


def test_unknown_format_and_split(cifar_root: Path) -> None:
    with pytest.raises(IzooError, match="unknown source format 'cifar100'"):
        open_source({"format": "cifar100", "root": str(cifar_root)})
    with pytest.raises(IzooError, match="has no split 'val'"):
        open_source({"format": "cifar10", "root": str(cifar_root), "splits": ["val"]})


def test_scene_demo_roundtrip(tmp_path: Path) -> None:
    root = make_scenes(tmp_path, seed=0, classes=("tower",), scenes_per_class=2, n_train=2, n_test=1, size=16)
    source = open_source({"format": "scenes", "root": str(root), "size": 16, "train_views": 2})
    refs = source.list_items("train")
    assert [r.item_id for r in refs] == ["tower_000", "tower_001"]
    scene = source.load(refs[0]).scene
    with open(root / "tower/tower_000/transforms_test.json") as fh:
        test_pose = json.load(fh)["frames"][0]["transform_matrix"]
    assert torch.allclose(scene.poses[2], torch.tensor(test_pose, dtype=torch.float32))
    # a fitting job opens the source afresh and loads manifest rows without walking the dataset
    fresh = open_source({"format": "scenes", "root": str(root), "size": 16, "train_views": 2})
    row = {"item_id": "tower_001", "split": "train", "label": 0, "source_id": "tower/tower_001"}
    assert torch.equal(fresh.load(row).scene.images, source.load(refs[1]).scene.images)


def test_imagenet_flat_test_split_is_unlabelled(imagenet_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "imagenet"
    shutil.copytree(imagenet_root, root)
    rng = np.random.default_rng(2)
    for k in (2, 1):
        _save(root / "test" / f"ILSVRC2012_test_{k:08d}.JPEG", _noise(rng, 30, 40), format="JPEG")
    source = open_source({"format": "imagenet", "root": str(root), "splits": ["train", "val", "test"],
                          "resize": 20, "crop": 16})
    test = source.list_items("test")
    assert test == [ItemRef("ILSVRC2012_test_00000001", "test", -1, "test/ILSVRC2012_test_00000001.JPEG"),
                    ItemRef("ILSVRC2012_test_00000002", "test", -1, "test/ILSVRC2012_test_00000002.JPEG")]
    sample = source.load(test[0])
    assert sample.label == -1 and sample.image.shape == (3, 16, 16)
    assert source.classes() == {0: "n01440764", 1: "n01443537", 2: "n02102040"}  # from train, not test
    # a flat val/ is still the classic mistake (unsorted validation images), not an unlabelled split
    flat_val = tmp_path / "flat_val"
    _save(flat_val / "train" / "n01440764" / "a.JPEG", _noise(rng, 20, 20), format="JPEG")
    _save(flat_val / "val" / "ILSVRC2012_val_00000001.JPEG", _noise(rng, 20, 20), format="JPEG")
    with pytest.raises(IzooError, match="lie directly in val/"):
        open_source({"format": "imagenet", "root": str(flat_val), "splits": ["train", "val"]}).list_items("val")
    # and an unlabelled split that holds class folders names the fix
    (root / "test" / "n01440764").mkdir()
    for path in (root / "test").glob("*.JPEG"):
        path.unlink()
    with pytest.raises(IzooError, match="unlabelled_splits"):
        open_source({"format": "imagenet", "root": str(root), "splits": ["test"]}).list_items("test")
