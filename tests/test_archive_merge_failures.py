"""A killed merge leaves no final file and a rerun completes; bad or missing inputs stop it, naming the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from izoo.archive import layout
from izoo.archive.checks import check_structure
from izoo.archive.merge import merge_split
from izoo.datasets.manifest import load_manifest
from izoo.errors import IzooError
from test_archive_fixtures import build_toy, merge_args

TESTS = Path(__file__).resolve().parent

KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from izoo.archive.merge import merge_split
from test_archive_fixtures import ToyData
args = {args!r}
def die(done, total):
    os.kill(os.getpid(), signal.SIGKILL)   # like an OOM kill or a SLURM hard kill: no cleanup runs
merge_split(**args, progress=die)
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return build_toy(tmp_path_factory.mktemp("toy"), basic_steps=10)


def test_killed_merge_leaves_no_final_file_and_rerun_completes(toy, tmp_path):
    out = tmp_path / "archive" / "train.h5"
    args = {k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if isinstance(v, list) else v)
            for k, v in merge_args(toy, "train", out).items()}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT.format(tests=str(TESTS), args=args)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert not out.exists()
    leftovers = list(out.parent.glob(".train.h5.tmp-*"))
    assert len(leftovers) == 1  # the half-written temporary, under a name nothing reads

    result = merge_split(**merge_args(toy, "train", out))
    assert result.n_items == 6 and out.exists()
    assert check_structure(out, load_manifest(toy.manifest)) == []
    assert list(out.parent.glob(".train.h5.tmp-*")) == []  # the killed run's temporary was cleaned up


def test_interrupted_merge_cleans_up_and_keeps_an_older_archive(toy, tmp_path):
    out = tmp_path / "train.h5"
    merge_split(**merge_args(toy, "train", out))
    before = out.read_bytes()

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge_split(**merge_args(toy, "train", out), progress=interrupt)
    assert out.read_bytes() == before
    assert list(tmp_path.glob(".train.h5.tmp-*")) == []


def test_corrupt_shard_stops_the_merge_naming_it(toy, tmp_path):
    bad = tmp_path / "train-00001.h5"
    data = toy.basic["train-00001"].read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk or a killed copy
    args = merge_args(toy, "train", tmp_path / "out.h5")
    args["shards"] = [toy.basic["train-00000"], bad]
    with pytest.raises(IzooError, match="corrupt or truncated") as err:
        merge_split(**args)
    assert str(bad) in str(err.value) and "rerun" in str(err.value)
    assert not (tmp_path / "out.h5").exists()

    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all" * 100)
    args["refined"] = [garbage]
    args["shards"] = [toy.basic["train-00000"], toy.basic["train-00001"]]
    with pytest.raises(IzooError, match=str(garbage)):
        merge_split(**args)


def test_missing_shard_file_or_missing_items_name_the_culprit(toy, tmp_path):
    args = merge_args(toy, "train", tmp_path / "out.h5")
    gone = tmp_path / "fit" / "basic" / "train-00001.h5"
    args["shards"] = [toy.basic["train-00000"], gone]
    with pytest.raises(IzooError, match="missing") as err:
        merge_split(**args)
    assert str(gone) in str(err.value)

    args["shards"] = [toy.basic["train-00000"]]  # forgot one shard of the split
    with pytest.raises(IzooError, match="train-00001") as err:
        merge_split(**args)
    assert "3 items" in str(err.value)
    assert not (tmp_path / "out.h5").exists()


def test_shard_of_another_config_or_split_is_refused(toy, tmp_path):
    other = layout.read_inr_file(toy.basic["train-00001"])
    wide = {name: np.zeros((3, 32, *value.shape[2:]) if name == "layer0.weight" else value.shape, np.float32)
            for name, value in other.params.items()}
    bad = layout.write_inr_file(tmp_path / "wide.h5", wide, other.items, other.attrs, other.extras)
    args = merge_args(toy, "train", tmp_path / "out.h5")
    args["shards"] = [toy.basic["train-00000"], bad]
    with pytest.raises(IzooError, match="parameter shapes differ") as err:
        merge_split(**args)
    assert str(bad) in str(err.value)

    args["shards"] = [toy.basic["train-00000"], toy.basic["train-00001"], toy.basic["test-00000"]]
    with pytest.raises(IzooError, match="not in split 'train'"):
        merge_split(**args)

    stale = pd.read_csv(toy.manifest)
    stale.loc[stale["index"] == 2, "item_id"] = "renamed"
    args["shards"] = [toy.basic["train-00000"], toy.basic["train-00001"]]
    args["manifest"] = stale
    with pytest.raises(IzooError, match="item ids differ"):
        merge_split(**args)


def test_later_refined_files_win(toy, tmp_path):
    args = merge_args(toy, "train", tmp_path / "out.h5")
    args["refined"] = [toy.extended]
    assert merge_split(**args).phase_counts == {"basic": 5, "extended": 1}
    args["refined"] = [toy.until, toy.extended]  # the order given decides, not the file names
    args["out"] = tmp_path / "out2.h5"
    assert merge_split(**args).phase_counts == {"basic": 5, "extended": 1}


def test_nan_weights_in_a_shard_stop_the_merge_naming_it(toy, tmp_path):
    shard = layout.read_inr_file(toy.basic["train-00001"])
    shard.params["layer1.weight"][1, 0, 0] = np.inf
    bad = layout.write_inr_file(tmp_path / "train-00001.h5", shard.params, shard.items, shard.attrs, shard.extras)
    args = merge_args(toy, "train", tmp_path / "out.h5")
    args["shards"] = [toy.basic["train-00000"], bad]
    args["refined"] = []
    with pytest.raises(IzooError, match=r"params/layer1.weight has NaN/Inf weights in 1 items \(index 4\)") as err:
        merge_split(**args)
    assert str(bad) in str(err.value) and not (tmp_path / "out.h5").exists()
    args["refined"] = [toy.extended]  # the refined item 4 replaces the broken one: nothing NaN is copied
    assert merge_split(**args).n_items == 6
