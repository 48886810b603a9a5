"""``InrArchive.dataloader``: a real ``torch.utils.data.DataLoader`` over contiguous runs, in and out of workers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import izoo.archive
from izoo.archive.reader import ContiguousRunBatchSampler
from test_interop_export import izoo_archive

N = 37


@pytest.fixture()
def archive(tmp_path: Path):
    with izoo.archive.open(izoo_archive(tmp_path / "a.h5", n=N)) as arch:
        yield arch


def _rows(loader) -> list[list[int]]:
    return [(batch["index"] - 10).tolist() for batch in loader]   # the fixture's manifest indices start at 10


def test_unshuffled_batches_are_the_archive_in_order(archive) -> None:
    loader = archive.dataloader(batch_size=8)
    assert isinstance(loader, DataLoader) and len(loader) == 5
    batches = list(loader)
    assert [len(b["label"]) for b in batches] == [8, 8, 8, 8, 5]
    whole = archive.batch(slice(None))
    for k, name in enumerate(archive.param_names):
        assert torch.equal(torch.cat([b["params"][k] for b in batches]), whole["params"][k]), name
    assert torch.equal(torch.cat([b["label"] for b in batches]), whole["label"])
    assert all(b["params"][0].device.type == "cpu" for b in batches)


def test_shuffled_batches_are_whole_runs_and_change_every_epoch(archive) -> None:
    loader = archive.dataloader(batch_size=8, shuffle=True, run_length=4, seed=3, indices=np.arange(32))
    first, second = _rows(loader), _rows(loader)
    assert len(first) == len(loader) == 4 and first != second
    for epoch in (first, second):
        seen = [r for batch in epoch for r in batch]
        assert sorted(seen) == list(range(32))
        for batch in epoch:   # two whole aligned runs of 4 rows: each batch is two slices of the file
            runs = [r // 4 for r in batch]
            assert len(set(runs)) == 2 and all(runs.count(r) == 4 for r in runs)
        assert any(batch != sorted(batch) for batch in epoch)     # shuffled within the batch too
    again = archive.dataloader(batch_size=8, shuffle=True, run_length=4, seed=3, indices=np.arange(32))
    assert _rows(again) == first                      # same seed, same epochs
    ragged = archive.dataloader(batch_size=5, shuffle=True, indices=np.arange(20, 31), drop_last=True)
    assert [len(b) for b in _rows(ragged)] == [5, 5] and set(sum(_rows(ragged), [])) <= set(range(20, 31))


def test_workers_read_the_same_batches(archive) -> None:
    loader = archive.dataloader(batch_size=6, shuffle=True, run_length=2, seed=1)
    single = list(loader)
    # spawn/forkserver workers get the dataset pickled: without the parent's h5py handles, reopening the file
    clone = pickle.loads(pickle.dumps(loader.dataset))
    assert torch.equal(clone.__getitems__([3, 1])["index"], torch.tensor([13, 11]))
    multi = list(archive.dataloader(batch_size=6, shuffle=True, run_length=2, seed=1, num_workers=2))
    assert len(single) == len(multi)
    for a, b in zip(single, multi):
        assert torch.equal(a["index"], b["index"])
        assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))


def test_sampler_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        ContiguousRunBatchSampler(10, 0)
    sampler = ContiguousRunBatchSampler(10, 4, run_length=3, shuffle=True)
    sampler.set_epoch(5)
    assert sorted(r for b in sampler for r in b) == list(range(10)) and sampler.epoch == 6


def test_a_plain_dataloader_over_the_archive_still_collates_items(archive) -> None:
    batch = next(iter(DataLoader(archive, batch_size=4)))
    assert batch["params"][0].shape == (4, *archive.param_shapes["layer0.weight"])
    assert batch["index"].tolist() == [10, 11, 12, 13]
