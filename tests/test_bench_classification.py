"""INR classification end to end: archives → tokenizer → ViT → metrics, the CLI, and the results table."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from izoo.archive import layout
from izoo.benchmarks.classification.data import InrSplit
from izoo.benchmarks.classification.model import build_classifier, build_vit
from izoo.benchmarks.classification.settings import ClassificationSettings
from izoo.benchmarks.classification.table import classification_table, table_markdown
from izoo.benchmarks.classification.train import (classification_metrics, majority_reference, make_scheduler,
                                                  run_classification)
from izoo.benchmarks.results import read_results, write_result
from izoo.cli import main as izoo_main
from izoo.errors import IzooError
from izoo.siren import model as siren

SPEC = siren.SirenSpec(depth=3, width=16)
CLASSES = 4
# a tiny ViT so a run costs seconds on a shared CPU; the real runs use the paper's ViT-tiny
TINY = {"model": "vit_tiny", "image_size": 16, "patch": 4, "batch_size": 32, "lr": 2e-3, "epochs": 6,
        "model_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2},
        "augment": {"n_ops": 1, "magnitude": 5, "enabled": True,
                    "ops": ["rotate", "shear_x", "shear_y", "translate_x", "translate_y", "cutout"]}}


def synthetic_archive(path: Path, n: int, seed: int, unlabelled: int = 0) -> Path:
    """Valid SIRENs whose class shows as image structure: a smooth random texture plus a class colour.

    No fitting (too slow for a shared CPU): every item is a randomly initialised SIREN with a smooth first
    layer, and the class adds its own colour to the RGB head's bias, so the rendered images carry the label.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    labels[n - unlabelled:] = -1  # the last items carry no class (like ImageNet's test images)
    params = siren.init_params(SPEC, [int(s) for s in rng.integers(0, 1 << 30, n)])
    params[0] = params[0] * 0.5                        # smooth textures
    params[-2] = params[-2] * 4.0                      # with visible contrast
    colours = torch.tensor([[1.2, -1.0, -1.0], [-1.0, 1.2, -1.0], [-1.0, -1.0, 1.2], [1.0, 1.0, -0.6]])
    params[-1] = params[-1] + colours[torch.as_tensor(labels % CLASSES)] * 0.3
    named = {f"layer{i // 2}.{'weight' if i % 2 == 0 else 'bias'}": p.numpy() for i, p in enumerate(params)}
    items = pd.DataFrame({"index": np.arange(n), "item_id": [f"x{i}" for i in range(n)],
                          "source_id": [f"synthetic#{i}" for i in range(n)], "split": "train", "label": labels,
                          "psnr": np.full(n, 40.0), "phase": "basic", "iterations": 0, "seconds": 0.0,
                          "passed": True})
    attrs = layout.base_attrs("siren", {**SPEC.to_dict(), "layer_shapes": [list(x) for x in SPEC.param_shapes()]})
    return layout.write_inr_file(path, named, items, attrs)


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bench_classify")
    return synthetic_archive(root / "train.h5", 192, 1), synthetic_archive(root / "test.h5", 64, 2)


def test_settings_defaults_are_the_papers_and_bad_keys_fail() -> None:
    s = ClassificationSettings.from_json(None)
    assert (s.model, s.patch, s.epochs, s.batch_size, s.lr, s.optimizer, s.schedule, s.reg_weight) == \
        ("vit_tiny", 4, 200, 512, 1e-4, "adam", "cosine", 1.0)
    assert s.augment == {"n_ops": 2, "magnitude": 9, "enabled": True}
    merged = ClassificationSettings.from_json('{"epochs": 3, "augment": {"n_ops": 1}}')
    assert merged.epochs == 3 and merged.augment["n_ops"] == 1 and merged.augment["magnitude"] == 9
    with pytest.raises(IzooError, match="unknown classification settings"):
        ClassificationSettings.from_json('{"epoch": 3}')
    with pytest.raises(IzooError, match="checkpoint"):
        ClassificationSettings.from_json('{"checkpoint": "/nonexistent/vit.pth"}')


def test_vit_tiny_is_the_papers_size() -> None:
    vit = build_vit(ClassificationSettings(), num_classes=10)
    assert len(vit.blocks) == 12 and vit.embed_dim == 192 and vit.blocks[0].attn.num_heads == 3
    assert tuple(vit.patch_embed.proj.kernel_size) == (4, 4) and vit.patch_embed.num_patches == 64


def test_metrics_match_hand_computed_values() -> None:
    pred = torch.tensor([0, 0, 1, 1, 2, 0])
    target = torch.tensor([0, 1, 1, 1, 2, 2])
    m = classification_metrics(pred, target, 3)
    # precision per class: 1/3, 2/2, 1/1; recall: 1/1, 2/3, 1/2
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    f1 = [2 * (1 / 3) * 1 / (4 / 3), 2 * 1 * (2 / 3) / (5 / 3), 2 * 1 * 0.5 / 1.5]
    assert m["f1"] == pytest.approx(sum(f1) / 3)


def test_checkpoint_loads_from_a_local_file_and_resets_the_head(tmp_path: Path) -> None:
    settings = ClassificationSettings(model="vit_tiny", image_size=16, patch=4,
                                          model_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})
    donor = build_vit(settings, num_classes=7)
    torch.save(donor.state_dict(), tmp_path / "vit.pth")
    settings.checkpoint = str(tmp_path / "vit.pth")
    vit = build_vit(settings, num_classes=3)
    assert torch.equal(vit.blocks[0].attn.qkv.weight, donor.blocks[0].attn.qkv.weight)
    assert vit.head.weight.shape == (3, 32)


def test_short_training_run_beats_chance(archives: tuple[Path, Path], tmp_path: Path) -> None:
    train, test = archives
    out = tmp_path / "lc-seed0.json"
    started = time.process_time()  # CPU time, so a busy shared machine does not fail the budget
    rc = izoo_main(["bench-classify", "--train", str(train), "--test", str(test), "--tokenizer", "lc", "--seed", "0",
                    "--settings", json.dumps(TINY), "--out", str(out), "--device", "cpu"])
    cpu_seconds = time.process_time() - started
    assert rc == 0 and cpu_seconds < 60
    result = json.loads(out.read_text())
    chance = 1 / CLASSES
    assert result["accuracy"] >= chance + 0.35, result["history"]
    assert 0 < result["precision"] <= 1 and 0 < result["f1"] <= 1
    assert len(result["history"]) == TINY["epochs"] and result["history"][-1]["test_acc"] == result["accuracy"]
    learned = np.asarray(result["token_coordinates"]["learned"])
    initial = np.asarray(result["token_coordinates"]["initial"])
    assert learned.shape == initial.shape == (16, 16, 2)
    assert not np.allclose(learned, initial), "LC centres/scales never moved"
    assert result["device"] == "cpu" and result["params"] > 0 and result["seconds"] > 0


def test_lp_reg_run_and_table(archives: tuple[Path, Path], tmp_path: Path) -> None:
    train, test = archives
    quick = {**TINY, "epochs": 1, "max_train_items": 64, "max_test_items": 32}
    paths = []
    for tok, seed in (("uniform", 0), ("uniform", 1), ("lp_reg", 0)):
        result = run_classification(train, test, tok, seed, ClassificationSettings.from_json(quick), "cpu")
        paths.append(write_result(result, tmp_path / f"{tok}-seed{seed}.json"))
        assert result["train_items"] == 64 and result["test_items"] == 32
    table = classification_table(read_results(paths, "classification"))
    assert list(table.tokenizer) == ["uniform", "lp_reg", "reference"] and list(table.seeds) == [2, 1, 2]
    runs = [json.loads(p.read_text()) for p in paths[:2]]
    accs = [100 * r["accuracy"] for r in runs]
    assert table.accuracy_mean[0] == pytest.approx(np.mean(accs))
    assert table.accuracy_std[0] == pytest.approx(np.std(accs, ddof=1))
    assert "LP+reg" in table_markdown(table)
    # the no-learning row: the train split's majority class predicted for every test item, on the same split
    test_labels = np.arange(64)[:32] % CLASSES
    assert table.accuracy_mean[2] == pytest.approx(100 * np.mean(test_labels == 0))
    assert "no learning (majority class of the train split)" in table_markdown(table)
    csv, md, png = tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "tokens.png"
    rc = izoo_main(["bench-classify-table", "--runs", *map(str, paths), "--out-csv", str(csv), "--out-md", str(md),
                    "--figure-from", str(paths[2]), "--out-png", str(png)])
    assert rc == 0 and len(pd.read_csv(csv)) == 3 and "± " in md.read_text()
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_foreign_run_file_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(IzooError, match="not a classification run result"):
        read_results([bad], "classification")


@pytest.mark.parametrize("schedule", ["cosine", "warmup_cosine", "constant"])
def test_lr_schedules(schedule: str) -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, schedule, total_steps=100, warmup_steps=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if schedule == "constant":
        assert lrs == [1.0] * 100
    elif schedule == "cosine":
        assert lrs[0] == 1.0 and lrs[50] == pytest.approx(0.5) and lrs[-1] < 0.01
    else:
        assert lrs[0] == pytest.approx(0.1) and lrs[10] == pytest.approx(1.0) and max(lrs) <= 1.0 + 1e-9
        assert lrs[-1] < 0.01 and all(a <= b for a, b in zip(lrs[:10], lrs[1:11]))


def test_streamed_split_yields_the_same_items_as_in_memory(archives: tuple[Path, Path]) -> None:
    train, _ = archives
    memory = InrSplit(train, torch.device("cpu"), max_items=40, in_memory_gb=8.0)
    streamed = InrSplit(train, torch.device("cpu"), max_items=40, in_memory_gb=0.0)
    assert memory.in_memory and not streamed.in_memory
    batches = list(streamed.batches(16, shuffle=False, generator=None))
    assert [len(labels) for _, labels in batches] == [16, 16, 8]
    params = [torch.cat([b[0][k] for b in batches]) for k in range(len(memory.params))]
    assert all(torch.equal(a, b) for a, b in zip(params, memory.params))
    assert torch.equal(torch.cat([labels for _, labels in batches]), memory.labels)
    shuffled = torch.cat([labels for _, labels in streamed.batches(16, shuffle=True, generator=None, seed=3)])
    assert sorted(shuffled.tolist()) == sorted(memory.labels.tolist())


def test_unlabelled_items_are_archived_but_left_out_of_classification(tmp_path: Path) -> None:
    mixed = synthetic_archive(tmp_path / "mixed.h5", 24, 3, unlabelled=8)
    split = InrSplit(mixed, torch.device("cpu"), max_items=None, in_memory_gb=8.0)
    assert len(split) == 16 and split.unlabelled == 8 and bool((split.labels >= 0).all())
    streamed = InrSplit(mixed, torch.device("cpu"), max_items=None, in_memory_gb=0.0)
    assert torch.equal(torch.cat([labels for _, labels in streamed.batches(5, False, None)]), split.labels)
    only_test = synthetic_archive(tmp_path / "test_split.h5", 6, 4, unlabelled=6)
    with pytest.raises(IzooError, match="no labelled items"):
        InrSplit(only_test, torch.device("cpu"), max_items=None, in_memory_gb=8.0)


def test_steps_end_training_and_inception_normalisation(archives: tuple[Path, Path]) -> None:
    train, test = archives
    quick = {**TINY, "steps": 3, "epochs": 50, "max_train_items": 64, "max_test_items": 16,
             "input_norm": "inception", "schedule": "warmup_cosine", "warmup_epochs": 1}
    result = run_classification(train, test, "uniform", 0, ClassificationSettings.from_json(quick), "cpu")
    assert result["steps"] == 3 and result["epochs_run"] == 2 and len(result["history"]) == 2  # 2 steps per epoch
    with pytest.raises(IzooError, match="input_norm"):
        ClassificationSettings.from_json('{"input_norm": "bgr"}')
    # the ViT sees (x01 - 0.5) / 0.5 where the SIRENs give ImageNet-normalised x
    settings = ClassificationSettings.from_json({**quick, "augment": {"enabled": False}})
    model = build_classifier(settings, "uniform", CLASSES, SPEC)
    params = layout_params(train)
    seen = {}
    model.vit.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    model.eval()
    model(params)
    images01 = siren.denormalise_rgb(model.query(params).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert torch.allclose(seen["x"], (images01 - 0.5) / 0.5, atol=1e-5)


def layout_params(path: Path) -> list[torch.Tensor]:
    import izoo.archive

    return izoo.archive.open(path, device="cpu").params_batch(slice(0, 4))


def test_majority_reference() -> None:
    ref = majority_reference(torch.tensor([2, 2, 1, 0]), torch.tensor([2, 0, 0, 2, 1]), 3)
    assert ref["predicts"] == 2 and ref["accuracy"] == pytest.approx(2 / 5)
