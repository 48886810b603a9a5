"""``izoo import implicit-zoo``: a released-layout tree built here, imported, rendered against an independent
re-implementation of the released ``INR.forward``, verified against its source, and its bad inputs."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import izoo.archive
from izoo.archive.verify import verify_archive
from izoo.cli import main
from izoo.errors import IzooError
from izoo.interop.implicit_zoo import import_implicit_zoo
from izoo.siren import model as siren
from released_layout import make_coordinates, released_image, to_pixels, write_cifar, write_run

TRAIN_LABELS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4]


@pytest.fixture()
def released(tmp_path: Path) -> dict:
    """Two generator runs (items 0..11 and 12..19) of the train split, and the CIFAR source they were fitted on."""
    root = tmp_path / "released"
    models = write_run(root / "run-a", 0, TRAIN_LABELS[:12])
    models.update(write_run(root / "run-b", 12, TRAIN_LABELS[12:]))
    # the source images are what the released INRs render (8-bit): re-measured PSNRs are high, a wrong grid shows
    images = torch.stack([to_pixels(released_image(models[i], 32, 32)) for i in range(len(TRAIN_LABELS))])
    pixels = (images * 255).round().to(torch.uint8).numpy()
    source = {"format": "cifar10", "splits": ["train", "test"],
              "root": str(write_cifar(tmp_path / "cifar", TRAIN_LABELS, [0, 1, 2, 3, 4], train_images=pixels))}
    return {"root": root, "models": models, "source": source, "tmp": tmp_path}


def test_import_renders_what_the_released_forward_renders(released: dict) -> None:
    out = released["tmp"] / "archive" / "train.h5"
    result = import_implicit_zoo([released["root"]], out, "train", dataset="cifar10-released",
                                 source_cfg=released["source"])
    assert (result.n_items, result.n_bad, result.psnr_measured_by) == (20, 0, "izoo")
    with izoo.archive.open(out) as arch:
        assert arch.coordinate_convention == siren.LINSPACE_ENDPOINTS
        assert arch.index.tolist() == list(range(20)) and arch.labels.tolist() == TRAIN_LABELS
        assert arch.spec == siren.SirenSpec(depth=3, width=16, w0=30.0, init="released")
        rows = list(range(20))
        for height, width in ((32, 32), (6, 10)):       # the CIFAR grid, and a non-square one (axis order)
            raw = siren.forward(arch.params_batch(rows), arch.coordinate_grid(height, width), arch.spec.w0)
            raw = raw.transpose(1, 2).reshape(20, 3, height, width)
            expected = torch.stack([released_image(released["models"][i], height, width) for i in rows])
            assert (raw - expected).abs().max().item() < 1e-5
            rendered = arch.render(rows, height, width)
            assert (rendered - to_pixels(expected)).abs().max().item() < 1e-5
        # the released PSNR stays as given; izoo's own is re-measured on the stored weights against the source
        assert arch.extras("released_psnr").tolist() == pytest.approx([20.0 + i / 4 for i in range(12)] +
                                                                      [20.0 + i / 4 for i in range(8)])
        from izoo.datasets.registry import open_source

        src = open_source(released["source"])
        images = torch.stack([src.load(ref).image for ref in src.list_items("train")])
        expected_psnr = -10 * torch.log10((to_pixels(torch.stack(
            [released_image(released["models"][i], 32, 32) for i in rows])) - images).pow(2).mean(dim=(1, 2, 3)))
        assert arch.psnr == pytest.approx(expected_psnr.numpy(), abs=1e-3) and arch.psnr.min() > 45
        assert arch.items["item_id"].tolist()[:2] == ["data_batch_1_00000", "data_batch_1_00001"]
        assert arch.attrs["imported_from"]["iterations"] == "unknown"
    # verify re-renders against the source images (the archive records its source) and finds nothing wrong
    report = verify_archive(out, manifest=result.manifest, sample=8)
    assert report.ok, report.problems
    assert any("re-rendered 8 sampled items against their source images" in n for n in report.notes)
    # the same weights decoded on izoo's pixel-centre grid are a different image: verify catches a wrong convention
    with h5py.File(out, "r+") as h5:
        h5.attrs["coordinate_convention"] = siren.PIXEL_CENTERS
    wrong = verify_archive(out, manifest=result.manifest, sample=8, tolerance=0.05)
    assert not wrong.ok and all("re-rendered" in p for p in wrong.problems)


def test_import_without_source_keeps_the_released_psnr(released: dict) -> None:
    out = released["tmp"] / "train.h5"
    result = import_implicit_zoo([released["root"] / "run-b"], out, "train")
    assert (result.n_items, result.psnr_measured_by) == (8, "released")
    with izoo.archive.open(out) as arch:
        assert arch.index.tolist() == list(range(12, 20))
        assert arch.psnr.tolist() == pytest.approx(arch.extras("released_psnr").tolist())
    report = verify_archive(out, manifest=result.manifest, source_cfg=released["source"], sample=4)
    assert report.ok and any("released ones" in n for n in report.notes)


def _break_some(root: Path) -> dict[str, Path]:
    """One of each bad input (run-a: a label folder, a refused pickle, wrong keys, wrong shapes; run-b: no PSNR file)."""
    ckpts = root / "run-a" / "ckpts"
    bad = {"label": ckpts / "cat", "pickle": ckpts / "03" / "000000_0000042.ckpt",
           "keys": ckpts / "01" / "000001_0000042.ckpt", "shape": ckpts / "04" / "000002_0000042.ckpt",
           "json": root / "run-b"}
    bad["label"].mkdir()
    torch.save({"image_idx": 3}, bad["label"] / "000003_0000042.ckpt")
    torch.save({"image_idx": 0, "params": argparse.Namespace(x=1)}, bad["pickle"])
    state = torch.load(bad["keys"], weights_only=True)
    torch.save({**state, "params": {k.replace("seq.", "net."): v for k, v in state["params"].items()}}, bad["keys"])
    state = torch.load(bad["shape"], weights_only=True)
    state["params"]["seq.1.weight"] = state["params"]["seq.1.weight"][:, :5]
    torch.save(state, bad["shape"])
    (root / "run-b" / "12_20.json").rename(root / "12_20.json.moved")
    return bad


def _repair(root: Path, path: Path, kind: str, models: dict) -> None:
    """Put a broken input back as the released generator wrote it."""
    if kind == "label":
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    elif kind == "json":
        (root / "12_20.json.moved").rename(path / "12_20.json")
    else:
        image_idx = int(path.name.split("_")[0])
        torch.save({"image_idx": image_idx, "params": models[image_idx].state_dict()}, path)


def test_bad_inputs_stop_the_import_with_one_line_or_are_skipped(released: dict, capsys) -> None:
    root, out = released["root"], released["tmp"] / "bad" / "train.h5"
    bad = _break_some(root)
    # on_bad_item error: the first bad input in order (listing, then items by index) stops it, named in one line
    for kind in ("label", "json", "pickle", "keys", "shape"):
        rc = main(["import", "implicit-zoo", str(root), "--out", str(out), "--split", "train"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "fix:" in err and not out.exists(), (kind, err)
        assert str(bad[kind]) in err, (kind, err)
        _repair(root, bad[kind], kind, released["models"])
    assert import_implicit_zoo([root], out, "train").n_items == 20      # all repaired
    # on_bad_item skip: the rest is imported, every bad input listed once with its reason
    bad = _break_some(root)
    assert main(["import", "implicit-zoo", str(root), "--out", str(out), "--split", "train", "--on-bad-item", "skip",
                 "--dataset-config", json.dumps(released["source"])]) == 0
    with izoo.archive.open(out) as arch:
        assert arch.index.tolist() == list(range(3, 12))
    with open(out.with_name("train.bad_items.csv")) as fh:
        reasons = {r["source_id"]: r["error"] for r in csv.DictReader(fh)}
    assert set(reasons) == {str(p) for p in bad.values()}
    assert "weights_only" in reasons[str(bad["pickle"])] and "argparse.Namespace" in reasons[str(bad["pickle"])]
    assert "not a number" in reasons[str(bad["label"])] and "no PSNR file" in reasons[str(bad["json"])]
    assert "'net.0.weight'" in reasons[str(bad["keys"])] and "chain" in reasons[str(bad["shape"])]


def test_several_seeds_need_a_choice(released: dict) -> None:
    root = released["tmp"] / "seeds"
    write_run(root / "run", 0, [1, 2], seed=42)
    write_run(root / "run", 0, [1, 2], seed=7)
    with pytest.raises(IzooError, match="--seed"):
        import_implicit_zoo([root], released["tmp"] / "s.h5", "train")
    result = import_implicit_zoo([root], released["tmp"] / "s.h5", "train", seed=7)
    assert result.n_items == 2
    with izoo.archive.open(result.archive) as arch:
        assert np.isfinite(arch.psnr).all() and arch.attrs["seed_mode"] == "shared"
    assert make_coordinates(2, 3)[:, 0].tolist() == [-1, 0, 1, -1, 0, 1]   # the helper's own axis order


def test_a_source_with_skipped_items_cannot_be_matched(released: dict) -> None:
    labels = list(TRAIN_LABELS)
    labels[5] = 12                                    # out of range: the source reader skips it
    source = {"format": "cifar10", "root": str(write_cifar(released["tmp"] / "cifar-bad", labels, [0])),
              "splits": ["train"], "on_bad_item": "skip"}
    with pytest.raises(IzooError, match="1 unreadable items"):
        import_implicit_zoo([released["root"]], released["tmp"] / "x.h5", "train", source_cfg=source)
