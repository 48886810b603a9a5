"""The shard manifest, the ``izoo manifest`` / ``izoo demo-data`` commands, and every bad-input case."""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from izoo.datasets import build_manifest, load_manifest, open_source, shard_ids, shard_rows
from izoo.datasets import commands
from izoo.datasets.demo import make_cifar10, make_cityscapes, py2_pickle_bytes
from izoo.errors import BadItemError, IzooError


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.fixture(scope="module")
def cifar_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cifar")
    make_cifar10(out, seed=0, n_per_class=5, n_test_per_class=1)
    return out / "cifar-10-batches-py"


@pytest.fixture
def cifar(cifar_master: Path, tmp_path: Path) -> Path:
    """A private copy of the CIFAR fixture that a test may damage."""
    return Path(shutil.copytree(cifar_master, tmp_path / "cifar-10-batches-py"))


def _folder(root: Path, per_class: int = 2, size: tuple[int, int] = (8, 8)) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for k in range(per_class):
                _save(root / split / cls / f"{k}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return root


def _rewrite_batch(path: Path, **changes) -> None:
    with open(path, "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    batch.update({k.encode(): v for k, v in changes.items()})
    path.write_bytes(py2_pickle_bytes(batch))


# ---- the manifest -------------------------------------------------------------------------------------------

def test_manifest_shards_splits_deterministically(cifar: Path, tmp_path: Path) -> None:
    cfg = {"format": "cifar10", "root": str(cifar)}
    info = build_manifest("cifar10", cfg, 16, tmp_path / "out")
    assert info.splits == {"train": 50, "test": 10} and info.n_items == 60
    assert list(info.shards) == ["train-00000", "train-00001", "train-00002", "train-00003", "test-00000"]
    assert [s["n"] for s in info.shards.values()] == [16, 16, 16, 2, 10]
    df = load_manifest(tmp_path / "out")
    assert list(df.columns) == ["index", "split", "item_id", "label", "source_id", "shard"]
    assert df["index"].tolist() == list(range(60))
    assert (df.groupby("shard")["split"].nunique() == 1).all()  # shards never mix splits
    rows = shard_rows(df, "train-00001")
    assert rows["index"].tolist() == list(range(16, 32))
    assert shard_ids(df) == list(info.shards)
    doc = json.loads((tmp_path / "out" / "shards.json").read_text())
    assert doc["dataset"] == "cifar10" and doc["format"] == "cifar10" and doc["shard_size"] == 16
    assert doc["classes"]["0"] == "astronaut" and doc["bad_items"] == []
    assert (tmp_path / "out" / "bad_items.csv").read_text() == "split,item_id,source_id,error\n"
    # the same config gives the same bytes (and leaves finished files untouched)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "out").iterdir()}
    build_manifest("cifar10", dict(cfg), 16, tmp_path / "out")
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "out").iterdir()} == before
    build_manifest("cifar10", dict(cfg), 16, tmp_path / "again")
    assert (tmp_path / "again" / "manifest.csv").read_bytes() == before["manifest.csv"][0]
    # a manifest row loads its item
    source = open_source(cfg)
    assert source.load(rows.iloc[0]).item_id == rows.iloc[0]["item_id"]
    with pytest.raises(IzooError, match="no shard 'train-00009'"):
        shard_rows(df, "train-00009")


def test_manifest_item_ids_that_look_like_numbers_or_na(tmp_path: Path) -> None:
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for stem in ("NA", "0001", "nan"):
        _save(root / "train" / "x" / f"{stem}.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    build_manifest("f", {"format": "folder", "root": str(root), "splits": ["train"]}, 2, tmp_path / "out")
    df = load_manifest(tmp_path / "out" / "manifest.csv")
    assert df["item_id"].tolist() == ["train/x/0001", "train/x/NA", "train/x/nan"]


def test_manifest_command(cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    dataset_cfg = json.dumps({"shard_size": 32, "source": {"format": "cifar10", "root": str(cifar), "max_items": 40}})
    args = parser.parse_args(["manifest", "--dataset", "c10", "--dataset-config", dataset_cfg,
                              "--out-dir", str(tmp_path / "out")])
    assert args.func(args) == 0
    assert "50 items, 3 shards" in capsys.readouterr().out
    cfg_file = tmp_path / "c10.json"
    cfg_file.write_text(dataset_cfg)
    args = parser.parse_args(["manifest", "--dataset", "c10", "--dataset-config", str(cfg_file),
                              "--out-dir", str(tmp_path / "out2"), "--shard-size", "64"])
    assert args.func(args) == 0 and len(load_manifest(tmp_path / "out2")["shard"].unique()) == 2
    args = parser.parse_args(["demo-data", "--out", str(tmp_path / "demo"), "--kind", "cityscapes"])
    assert args.func(args) == 0
    assert (tmp_path / "demo" / "cityscapes" / "gtFine" / "val").is_dir()


# ---- bad input ----------------------------------------------------------------------------------------------

def test_missing_directory(tmp_path: Path) -> None:
    for fmt in ("cifar10", "imagenet", "cityscapes", "scenes", "folder"):
        with pytest.raises(IzooError, match="dataset root does not exist") as err:
            open_source({"format": fmt, "root": str(tmp_path / "nowhere")})
        assert str(tmp_path / "nowhere") in str(err.value) and "\n" not in str(err.value)


def test_cifar_binary_and_matlab_versions_are_named(tmp_path: Path) -> None:
    (tmp_path / "bin" / "cifar-10-batches-bin").mkdir(parents=True)
    (tmp_path / "bin" / "cifar-10-batches-bin" / "data_batch_1.bin").write_bytes(b"\0" * 3073)
    with pytest.raises(IzooError, match="binary version.*python version.*cifar-10-batches-py"):
        open_source({"format": "cifar10", "root": str(tmp_path / "bin")})
    (tmp_path / "mat").mkdir()
    (tmp_path / "mat" / "data_batch_1.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(IzooError, match="MATLAB version.*python version"):
        open_source({"format": "cifar10", "root": str(tmp_path / "mat")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(IzooError, match="not a CIFAR-10 directory"):
        open_source({"format": "cifar10", "root": str(tmp_path / "empty")})


def test_cifar_truncated_pickle(cifar: Path, tmp_path: Path) -> None:
    batch = cifar / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(BadItemError, match="corrupt or truncated pickle") as err:
        build_manifest("c", {"format": "cifar10", "root": str(cifar.parent)}, 8, tmp_path / "out")
    assert str(batch) in str(err.value)
    assert not (tmp_path / "out" / "manifest.csv").exists()  # never a half-written manifest
    info = build_manifest("c", {"format": "cifar10", "root": str(cifar), "on_bad_item": "skip"}, 8, tmp_path / "out")
    assert info.splits["train"] == 40
    assert info.bad_items == [{"split": "train", "item_id": "data_batch_2", "source_id": "data_batch_2",
                               "error": info.bad_items[0]["error"]}]
    report = (tmp_path / "out" / "bad_items.csv").read_text().splitlines()
    assert len(report) == 2 and report[1].startswith("train,data_batch_2,data_batch_2,corrupt or truncated pickle")


def test_cifar_label_out_of_range(cifar: Path, tmp_path: Path) -> None:
    with open(cifar / "test_batch", "rb") as fh:
        labels = pickle.load(fh, encoding="bytes")[b"labels"]
    labels[4] = 12
    _rewrite_batch(cifar / "test_batch", labels=labels)
    with pytest.raises(BadItemError, match="label 12 out of range 0..9") as err:
        build_manifest("c", {"format": "cifar10", "root": str(cifar)}, 8, tmp_path / "out")
    assert str(cifar / "test_batch") in str(err.value)
    info = build_manifest("c", {"format": "cifar10", "root": str(cifar), "on_bad_item": "skip"}, 8, tmp_path / "out")
    assert info.splits == {"train": 50, "test": 9}
    assert [(b["item_id"], b["source_id"]) for b in info.bad_items] == [("test_batch_00004", "test_batch#4")]
    source = open_source({"format": "cifar10", "root": str(cifar), "on_bad_item": "skip"})
    with pytest.raises(BadItemError, match="label 12 out of range"):
        source.load({"item_id": "test_batch_00004", "split": "test", "label": 12, "source_id": "test_batch#4"})


def test_cifar_images_of_unexpected_size(cifar: Path, tmp_path: Path) -> None:
    _rewrite_batch(cifar / "data_batch_1", data=np.zeros((10, 3000), dtype=np.uint8))
    with pytest.raises(BadItemError, match=r"images of unexpected size.*\[10, 3000\].*3072"):
        build_manifest("c", {"format": "cifar10", "root": str(cifar)}, 8, tmp_path / "out")


def test_failed_rebuild_keeps_the_previous_manifest(cifar: Path, tmp_path: Path) -> None:
    cfg = {"format": "cifar10", "root": str(cifar)}
    build_manifest("c", cfg, 8, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    (cifar / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(IzooError):
        build_manifest("c", cfg, 8, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # no temp files either


def test_truncated_and_corrupt_images_in_a_folder(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    good = (root / "train" / "a" / "0.png").read_bytes()
    (root / "train" / "a" / "1.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "train" / "b" / "0.png").write_bytes(b"this is not an image")  # corrupt
    cfg = {"format": "folder", "root": str(root)}
    with pytest.raises(BadItemError, match="truncated") as err:
        build_manifest("f", cfg, 4, tmp_path / "out")
    assert str(root / "train" / "a" / "1.png") in str(err.value) and "on_bad_item: skip" in str(err.value)
    info = build_manifest("f", dict(cfg, on_bad_item="skip"), 4, tmp_path / "out")
    assert info.splits == {"train": 2, "test": 4}
    assert [b["source_id"] for b in info.bad_items] == ["train/a/1.png", "train/b/0.png"]
    assert "corrupt or truncated image" in info.bad_items[1]["error"]
    with pytest.raises(BadItemError, match="corrupt or truncated image"):
        open_source(cfg).load({"item_id": "train/a/1", "split": "train", "label": 0, "source_id": "train/a/1.png"})


def test_truncated_jpeg_in_imagenet(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in range(2):
            _save(tmp_path / split / "n01" / f"{split}_{k}.JPEG", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8),
                  format="JPEG")
    jpeg = tmp_path / "val" / "n01" / "val_1.JPEG"
    jpeg.write_bytes(jpeg.read_bytes()[:-200])
    with pytest.raises(BadItemError, match="truncated image"):
        build_manifest("in", {"format": "imagenet", "root": str(tmp_path)}, 4, tmp_path / "out")
    info = build_manifest("in", {"format": "imagenet", "root": str(tmp_path), "on_bad_item": "skip"}, 4,
                          tmp_path / "out")
    assert info.splits == {"train": 2, "val": 1} and info.bad_items[0]["item_id"] == "val_1"


def test_imagenet_flat_val_folder_is_explained(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _save(tmp_path / "train" / "n01" / "a.JPEG", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), format="JPEG")
    _save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
          format="JPEG")
    source = open_source({"format": "imagenet", "root": str(tmp_path)})
    with pytest.raises(IzooError, match="directly in val/.*valprep"):
        source.list_items("val")


def test_folder_image_of_unexpected_size(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    _save(root / "test" / "b" / "1.png", np.zeros((9, 8, 3), dtype=np.uint8))
    with pytest.raises(BadItemError, match="unexpected size 8x9 .*8x8.*source.size"):
        build_manifest("f", {"format": "folder", "root": str(root)}, 4, tmp_path / "out")
    info = build_manifest("f", {"format": "folder", "root": str(root), "size": 8}, 4, tmp_path / "out")
    assert info.splits == {"train": 4, "test": 4}  # with size set, every image is resized


def test_empty_split(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    for png in (root / "test").rglob("*.png"):
        png.unlink()
    with pytest.raises(IzooError, match="split 'test' is empty") as err:
        build_manifest("f", {"format": "folder", "root": str(root), "on_bad_item": "skip"}, 4, tmp_path / "out")
    assert str(root) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_all_items_bad_is_an_empty_split_even_with_skip(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", per_class=1)
    for png in (root / "test").rglob("*.png"):
        png.write_bytes(b"junk")
    with pytest.raises(IzooError, match="split 'test' has no usable items \\(2 bad\\)"):
        build_manifest("f", {"format": "folder", "root": str(root), "on_bad_item": "skip"}, 4, tmp_path / "out")


def test_cityscapes_bad_items(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path, seed=0, cities={"train": {"aachen": 4}, "val": {"lindau": 1}})
    gt = root / "gtFine" / "train" / "aachen"
    (gt / "aachen_000000_000019_gtFine_labelIds.png").unlink()  # missing label map
    _save(gt / "aachen_000001_000019_gtFine_labelIds.png", np.full((32, 64), 7, dtype=np.uint8))  # wrong size
    ids = np.asarray(Image.open(gt / "aachen_000002_000019_gtFine_labelIds.png")).copy()
    ids[0, 0] = 50
    _save(gt / "aachen_000002_000019_gtFine_labelIds.png", ids)  # label id out of range
    cfg = {"format": "cityscapes", "root": str(root), "size": [32, 64]}
    with pytest.raises(BadItemError, match="label map missing"):
        build_manifest("cs", cfg, 2, tmp_path / "out")
    info = build_manifest("cs", dict(cfg, on_bad_item="skip"), 2, tmp_path / "out")
    assert info.splits == {"train": 2, "val": 1}
    assert [b["item_id"] for b in info.bad_items] == ["aachen_000000_000019", "aachen_000001_000019"]
    assert "label map of unexpected size 64x32" in info.bad_items[1]["error"]
    # the out-of-range id is found when the item is loaded, or by a full validation pass
    ref = next(r for r in open_source(dict(cfg, on_bad_item="skip")).list_items("train") if r.item_id.endswith("2_000019"))
    with pytest.raises(BadItemError, match="label id 50 out of range"):
        open_source(cfg).load(ref)
    full = build_manifest("cs", dict(cfg, on_bad_item="skip", validate="full"), 2, tmp_path / "full")
    assert full.splits == {"train": 1, "val": 1}
    assert full.bad_items[-1]["error"].startswith("label id 50 out of range")


def test_scene_bad_items(tmp_path: Path) -> None:
    def scene(name: str, sizes: list[int], angle: float = 0.7) -> Path:
        scene_dir = tmp_path / "scenes" / "obj" / name
        frames = []
        for k, size in enumerate(sizes):
            _save(scene_dir / "train" / f"r_{k}.png", np.zeros((size, size, 4), dtype=np.uint8))
            frames.append({"file_path": f"./train/r_{k}", "transform_matrix": np.eye(4).tolist()})
        (scene_dir / "transforms_train.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
        return scene_dir

    scene("obj_000", [16, 16, 16])
    scene("obj_001", [16, 16, 12])  # one view of another size
    scene("obj_002", [16, 16])  # no held-out view
    (scene("obj_003", [16, 16, 16]) / "transforms_train.json").write_text("{ not json")
    scene("obj_004", [16, 16, 16], angle=4.0)
    cfg = {"format": "scenes", "root": str(tmp_path / "scenes"), "size": 8, "train_views": 2}
    with pytest.raises(BadItemError, match="unexpected size 12x12"):
        build_manifest("s", cfg, 2, tmp_path / "out")
    info = build_manifest("s", dict(cfg, on_bad_item="skip"), 2, tmp_path / "out")
    assert info.splits == {"train": 1}
    errors = {b["item_id"]: b["error"] for b in info.bad_items}
    assert "needs more than train_views=2" in errors["obj_002"]
    assert "unreadable transforms file" in errors["obj_003"]
    assert "camera_angle_x 4.0" in errors["obj_004"]
