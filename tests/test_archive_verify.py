"""``izoo verify`` passes a good archive and catches tampered ones; ``izoo inspect`` summarises."""

from __future__ import annotations

import argparse
import re
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

import izoo.archive
from izoo.archive import commands
from izoo.archive.merge import merge_split
from izoo.archive.verify import verify_archive
from izoo.errors import IzooError
from test_archive_fixtures import build_toy, merge_args


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return build_toy(tmp_path_factory.mktemp("toy"), basic_steps=30)


@pytest.fixture(scope="module")
def archive(toy):
    return merge_split(**merge_args(toy, "train", toy.root / "archive" / "train.h5")).path


@pytest.fixture()
def source_images(toy):
    return lambda row: toy.images[int(row["index"])]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="izoo")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def tampered(archive, tmp_path, edit) -> str:
    copy = tmp_path / "tampered.h5"
    shutil.copy(archive, copy)
    with h5py.File(copy, "r+") as h5:
        edit(h5)
    return copy


def test_good_archive_passes(toy, archive, source_images, capsys):
    report = verify_archive(archive, manifest=toy.manifest, source_images=source_images, sample=6)
    assert report.ok, report.problems
    assert any("re-rendered 6 sampled items against their source images" in n for n in report.notes)
    out = archive.parent / "train.verified.txt"
    assert run_cli(["verify", str(archive), "--manifest", str(toy.manifest), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.strip().endswith("OK") and out.read_text() == printed


def test_nan_weight_is_caught(archive, tmp_path, capsys):
    def poison(h5):
        h5["params/layer1.weight"][2, 0, 0] = np.nan

    bad = tampered(archive, tmp_path, poison)
    assert run_cli(["verify", str(bad), "--sample", "0", "--out", str(tmp_path / "ok.txt")]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM: params/layer1.weight has NaN/Inf weights in 1 items (index 2)" in out
    assert f"{bad}: fix: delete {bad} and rerun" in out.splitlines()[-1]   # every failure says what to do
    assert not (tmp_path / "ok.txt").exists()   # no OK file for a failed archive


def test_changed_weights_or_psnr_are_caught_against_the_source(toy, archive, tmp_path, source_images):
    def scale(h5):
        h5["params/layer2.weight"][0] = h5["params/layer2.weight"][0] * 1.5

    report = verify_archive(tampered(archive, tmp_path, scale), manifest=toy.manifest,
                            source_images=source_images, sample=6)
    assert len(report.problems) == 1 and report.problems[0].startswith("item index 0: stored PSNR")

    def boost(h5):
        psnr = h5["items/psnr"][:]
        psnr[1] += 3.0
        h5["items/psnr"][:] = psnr
        h5["items/passed"][:] = psnr >= h5.attrs["gate_psnr"]  # a careful tamperer keeps the flags consistent

    report = verify_archive(tampered(archive, tmp_path, boost), manifest=toy.manifest,
                            source_images=source_images, sample=6)
    assert [p.split(":")[0] for p in report.problems] == ["item index 1"]


def test_exploded_weights_are_caught_without_the_source(archive, tmp_path):
    def explode(h5):
        h5["params/layer2.weight"][3] = h5["params/layer2.weight"][3] * 50

    report = verify_archive(tampered(archive, tmp_path, explode), sample=6)
    assert len(report.problems) == 1 and "item index 3: only" in report.problems[0]


def test_counts_order_and_flags_are_checked(toy, archive, tmp_path):
    short = pd.read_csv(toy.manifest)
    short = short[short["index"] != 5]
    report = verify_archive(archive, manifest=short, sample=0)
    assert report.problems == ["holds 6 items, the manifest's split 'train' 5"]

    def swap(h5):
        h5["items/index"][0:2] = [1, 0]

    report = verify_archive(tampered(archive, tmp_path, swap), manifest=toy.manifest, sample=0)
    assert report.problems and "item order differs from the manifest at row 0" in report.problems[0]

    def flip(h5):
        h5["items/passed"][4] = not h5["items/passed"][4]

    report = verify_archive(tampered(archive, tmp_path, flip), sample=0)
    assert len(report.problems) == 1 and "items/passed disagrees" in report.problems[0]

    def drop_row(h5):
        h5["params/layer0.bias"].resize(5, axis=0)

    report = verify_archive(tampered(archive, tmp_path, drop_row), sample=0)
    assert report.problems == ["params/layer0.bias has 5 rows, the archive 6 items"]


def test_truncated_or_virtual_without_sources(toy, archive, tmp_path):
    cut = tmp_path / "cut.h5"
    cut.write_bytes(archive.read_bytes()[:2000])
    report = verify_archive(cut)
    assert len(report.problems) == 1 and "cannot open" in report.problems[0]

    folder = tmp_path / "moved"
    shutil.copytree(toy.root, folder)
    virtual = merge_split(**merge_args(build_toy_from(folder, toy), "train", folder / "archive" / "v.h5"),
                          virtual=True).path
    assert verify_archive(virtual, sample=2).ok
    (folder / "fit" / "basic" / "train-00001.h5").unlink()
    report = verify_archive(virtual, sample=0)
    assert any("maps onto missing file" in p and "train-00001.h5" in p for p in report.problems)
    with pytest.raises(IzooError, match="train-00001.h5"):
        izoo.archive.open(virtual)


def build_toy_from(folder, toy):
    """The toy dataset's paths re-rooted at ``folder`` (a copy of ``toy.root``)."""
    def move(p):
        return folder / p.relative_to(toy.root)

    return type(toy)(folder, move(toy.manifest), toy.images, {k: move(v) for k, v in toy.basic.items()},
                     move(toy.extended), move(toy.until), toy.expected_psnr, toy.expected_phase, toy.expected_params)


def test_inspect_prints_the_summary(archive, capsys):
    assert run_cli(["inspect", str(archive)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^items\s+6$", out, re.M)
    assert re.search(r"^classes\s+3 \(items per class 2\.\.2\)$", out, re.M)
    assert "phases" in out and "until_threshold 1" in out and "size on disk" in out and "gate_psnr" in out
