"""Segmentation benchmark: mIoU on a hand-computed case, the all-MLP head, weight-space flips, a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from izoo.archive.layout import base_attrs, write_inr_file
from izoo.archive.reader import open_archive
from izoo.benchmarks.engine import confusion_matrix
from izoo.benchmarks.segmentation.metrics import IGNORE_INDEX, iou_per_class, mean_iou, pixel_accuracy
from izoo.benchmarks.segmentation.model import InrSegmenter, SegFormerHead, build_encoder, count_gflops
from izoo.benchmarks.segmentation.settings import SegSettings
from izoo.benchmarks.segmentation.train import majority_reference, train_segmentation
from izoo.benchmarks.segmentation.transforms import hflip_params, zoom_crop
from izoo.siren import model as siren

TINY_ENCODER = {"depths": [1, 1, 1, 1], "embed_dims": [8, 16, 16, 16], "num_heads": [1, 1, 1, 1],
                "mlp_ratios": [2, 2, 2, 2]}



def test_miou_matches_hand_computed_case():
    # 3 classes; 255 pixels are ignored whatever they are predicted as
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    conf = confusion_matrix(pred, target, num_classes=3, ignore_index=IGNORE_INDEX)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # IoU: class 0 = 1 / (2 + 2 - 1) = 1/3, class 1 = 2 / (2 + 3 - 2) = 2/3, class 2 = 1 / (2 + 1 - 1) = 1/2
    assert iou_per_class(conf).tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert mean_iou(conf) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert pixel_accuracy(conf) == pytest.approx(4 / 6)


def test_miou_skips_classes_absent_everywhere():
    target = torch.tensor([0, 0, 1])
    pred = torch.tensor([0, 0, 1])
    conf = confusion_matrix(pred, target, num_classes=19)
    assert math.isnan(float(iou_per_class(conf)[5]))
    assert mean_iou(conf) == pytest.approx(1.0)


def test_hflip_in_weight_space_mirrors_the_image():
    spec = siren.SirenSpec(depth=3, width=16)
    params = siren.init_params(spec, [1, 2])
    flipped = hflip_params(params, torch.tensor([True, False]))
    img, img_f = siren.render(params, spec, 6, 10), siren.render(flipped, spec, 6, 10)
    assert torch.allclose(img_f[0], img[0].flip(-1), atol=1e-5)
    assert torch.equal(img_f[1], img[1])


def test_segformer_head_shapes():
    head = SegFormerHead([8, 16, 24, 32], dim=12, num_classes=5)
    feats = [torch.randn(2, c, 16 // 2 ** i, 32 // 2 ** i) for i, c in enumerate([8, 16, 24, 32])]
    assert head(feats).shape == (2, 5, 16, 32)


def make_seg_archive(path, n, height, width, seed):
    """A tiny Cityscapes-like SIREN archive: random SIRENs whose label map is the brightest colour channel."""
    spec = siren.SirenSpec(depth=2, width=8, w0=30.0)
    params = siren.init_params(spec, list(range(seed, seed + n)))
    images = siren.render(params, spec, height, width)
    labels = images.argmax(1).to(torch.uint8).numpy()
    labels[:, 0, :] = 255  # an ignored row, as Cityscapes' unlabelled pixels
    names = [f"layer{k // 2}.{'weight' if k % 2 == 0 else 'bias'}" for k in range(len(params))]
    items = pd.DataFrame({"index": np.arange(n), "item_id": [f"c{i}" for i in range(n)],
                          "source_id": [f"s{i}" for i in range(n)], "split": "train", "label": -1,
                          "psnr": 40.0, "phase": "basic", "iterations": 10, "seconds": 0.1, "passed": True})
    attrs = base_attrs("siren", {**spec.to_dict()}, dataset="cityscapes", split="train")
    write_inr_file(path, {k: v.numpy() for k, v in zip(names, params)}, items, attrs,
                   extras={"label_map": labels, "label_map_coarse": labels.copy()})
    return path


def tiny_settings(**over):
    base = dict(height=32, width=64, patch=4, num_classes=3, steps=3, batch_size=2, eval_batch_size=4,
                encoder_kwargs=TINY_ENCODER, decoder_dim=8, log_every=0)
    base.update(over)
    return SegSettings(**base)


@pytest.mark.parametrize("tokenizer", ["uniform", "lp_reg"])
def test_short_training_run_end_to_end(tmp_path, tokenizer):
    train = make_seg_archive(tmp_path / "train.h5", 4, 32, 64, seed=0)
    val = make_seg_archive(tmp_path / "val.h5", 2, 32, 64, seed=10)
    record = train_segmentation(train, val, tokenizer, seed=0, settings=tiny_settings())
    assert 0.0 <= record["miou_fine"] <= 1.0 and 0.0 <= record["miou_coarse"] <= 1.0
    assert record["gflops_with_query"] > record["gflops_network"] > 0
    assert record["params"] > (32 * 64 * 2 if tokenizer == "lp_reg" else 0)
    assert math.isfinite(record["final_train_loss"])


def test_cli_and_table(tmp_path):
    from izoo.cli import main

    train = make_seg_archive(tmp_path / "train.h5", 2, 32, 64, seed=0)
    settings = json.dumps({**tiny_settings(steps=1).__dict__})
    outs = []
    for tok, s in [("uniform", 0), ("lc", 0), ("lc", 1)]:
        out = tmp_path / f"{tok}-{s}.json"
        assert main(["bench-segment", "--train", str(train), "--test", str(train), "--tokenizer", tok,
                     "--seed", str(s), "--settings", settings, "--out", str(out)]) == 0
        outs.append(str(out))
    assert main(["bench-segment-table", "--runs", *outs, "--out-csv", str(tmp_path / "t.csv"),
                 "--out-md", str(tmp_path / "t.md")]) == 0
    table = pd.read_csv(tmp_path / "t.csv")
    assert table["tokenizer"].tolist() == ["uniform", "lc", "reference"]
    assert table["seeds"].tolist() == [1, 2, 2]
    assert "no learning (majority class" in (tmp_path / "t.md").read_text()
    assert "LC" in (tmp_path / "t.md").read_text()


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    from izoo.errors import IzooError

    with pytest.raises(IzooError, match="checkpoint is missing"):
        build_encoder(tiny_settings(encoder_checkpoint=str(tmp_path / "nope.pth")))


def test_local_checkpoint_loads(tmp_path):
    import timm

    full = timm.create_model("pvt_v2_b0", pretrained=False, **TINY_ENCODER)
    ckpt = tmp_path / "enc.pth"
    torch.save(full.state_dict(), ckpt)
    enc = build_encoder(tiny_settings(encoder_checkpoint=str(ckpt)))
    assert torch.equal(enc.state_dict()["patch_embed.proj.weight"], full.state_dict()["patch_embed.proj.weight"])


def test_gflops_of_the_inr_query_match_the_siren_layer_sizes():
    spec = siren.SirenSpec(depth=3, width=16)
    model = InrSegmenter(tiny_settings(), "lc")
    flops = count_gflops(model, siren.init_params(spec, [0]), spec.w0)
    assert flops["gflops_inr_query"] * 1e9 == pytest.approx(spec.flops_per_pixel() * 32 * 64)
    assert flops["gflops_paper_convention"] == pytest.approx(flops["gflops_with_query"])
    uniform = count_gflops(InrSegmenter(tiny_settings(), "uniform"), siren.init_params(spec, [0]), spec.w0)
    assert uniform["gflops_paper_convention"] == pytest.approx(uniform["gflops_network"])


def test_zoom_crop_in_weight_space_is_exact():
    spec = siren.SirenSpec(depth=3, width=16)
    params = siren.init_params(spec, [3, 4])
    labels = torch.arange(32, dtype=torch.long).reshape(1, 4, 8).repeat(2, 1, 1)
    ratio = torch.tensor([2.0, 1.0])
    offset = torch.tensor([[-0.5, -0.5], [0.0, 0.0]])  # item 0: the top-left quadrant, 2× larger
    zoomed, zlabels = zoom_crop(params, labels, ratio, offset)
    grid = siren.coordinate_grid(4, 8)
    expect = siren.forward(params, grid[None] / ratio[:, None, None] + offset[:, None, :], spec.w0)
    assert torch.allclose(siren.forward(zoomed, grid, spec.w0), expect, atol=1e-5)
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(8), indexing="ij")
    assert torch.equal(zlabels[0], labels[0][rows // 2, cols // 2])
    assert torch.equal(zlabels[1], labels[1])


def test_majority_reference_miou_on_the_test_split(tmp_path):
    train = make_seg_archive(tmp_path / "train.h5", 3, 8, 16, seed=0)
    test = make_seg_archive(tmp_path / "test.h5", 2, 8, 16, seed=5)
    settings = tiny_settings(height=8, width=16)
    ref = majority_reference(open_archive(train), open_archive(test), settings)
    train_maps = open_archive(train).label_maps()
    majority = int(np.bincount(train_maps[train_maps < 3], minlength=3).argmax())
    target = torch.from_numpy(open_archive(test).label_maps().astype(np.int64))
    confusion = confusion_matrix(torch.full_like(target, majority), target, 3)
    assert ref["predicts"] == majority
    assert ref["miou_fine"] == pytest.approx(mean_iou(confusion)) and ref["miou_coarse"] == ref["miou_fine"]
