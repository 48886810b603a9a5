"""Coordinate conventions: the grids, their exact conversion, the archive attribute (old archives included) and
the consumers that must follow it (tokenizers, segmentation label resampling, verify)."""

from __future__ import annotations

from pathlib import Path

import h5py
import pandas as pd
import pytest
import torch

import izoo.archive
from izoo.archive.verify import verify_archive
from izoo.benchmarks.segmentation.transforms import zoom_crop
from izoo.benchmarks.tokenizers import CoordinateTokenizer
from izoo.errors import IzooError
from izoo.siren import model as siren
from test_interop_export import SPEC, izoo_archive


def test_grids() -> None:
    centres = siren.coordinate_grid(2, 4)
    assert centres[:4, 0].tolist() == [-0.75, -0.25, 0.25, 0.75] and centres[::4, 1].tolist() == [-0.5, 0.5]
    ends = siren.coordinate_grid(2, 3, convention=siren.LINSPACE_ENDPOINTS)
    assert ends[:3, 0].tolist() == [-1.0, 0.0, 1.0] and ends[::3, 1].tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="pixel_centers"):
        siren.coordinate_grid(2, 2, convention="corners")


@pytest.mark.parametrize("source", sorted(siren.COORDINATE_CONVENTIONS))
def test_change_convention_is_exact_at_its_resolution(source: str) -> None:
    target = ({*siren.COORDINATE_CONVENTIONS} - {source}).pop()
    params = siren.init_params(SPEC, [1, 2])
    moved = siren.change_convention(params, source, target, 6, 10)
    before = siren.render(params, SPEC, 6, 10, convention=source)
    after = siren.render(moved, SPEC, 6, 10, convention=target)
    assert (before - after).abs().max() < 1e-5
    assert (siren.render(moved, SPEC, 6, 10, convention=source) - before).abs().max() > 1e-3
    back = siren.change_convention(moved, target, source, 6, 10)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(back, params))


def test_archive_attribute_old_missing_and_unknown(tmp_path: Path) -> None:
    path = izoo_archive(tmp_path / "a.h5")
    with izoo.archive.open(path) as arch:
        assert arch.coordinate_convention == siren.PIXEL_CENTERS
        reference = arch.render([0], 8, 8)
    for value in ("pixel centres in (-1, 1); channel 0 = x (column, left→right), channel 1 = y (row, top→bottom)",
                  None):   # what archives written before the named conventions hold, and none at all
        with h5py.File(path, "r+") as h5:
            if value is None:
                del h5.attrs["coordinate_convention"]
            else:
                h5.attrs["coordinate_convention"] = value
        with izoo.archive.open(path) as arch:
            assert arch.coordinate_convention == siren.PIXEL_CENTERS and torch.equal(arch.render([0], 8, 8), reference)
    with h5py.File(path, "r+") as h5:
        h5.attrs["coordinate_convention"] = siren.LINSPACE_ENDPOINTS
    with izoo.archive.open(path) as arch:
        assert not torch.equal(arch.render([0], 8, 8), reference)
    with h5py.File(path, "r+") as h5:
        h5.attrs["coordinate_convention"] = "corners"
    with pytest.raises(IzooError, match="unknown coordinate_convention"):
        izoo.archive.open(path)
    report = verify_archive(path, sample=0)
    assert any("unknown coordinate_convention" in p for p in report.problems)


@pytest.mark.parametrize("convention", sorted(siren.COORDINATE_CONVENTIONS))
def test_consumers_follow_the_convention(convention: str) -> None:
    params = siren.init_params(SPEC, [3, 4])
    tokenizer = CoordinateTokenizer("uniform", 8, 8, 4, convention=convention)
    rgb = siren.denormalise_rgb(tokenizer(params, SPEC.w0).permute(0, 2, 3, 1)).clamp(0, 1).permute(0, 3, 1, 2)
    assert (rgb - siren.render(params, SPEC, 8, 8, convention=convention)).abs().max() < 1e-5
    learnable = CoordinateTokenizer("lp", 8, 8, 4, convention=convention)
    assert torch.allclose(learnable.coordinates(), tokenizer.coordinates(), atol=1e-6)
    # an identity crop keeps every label only if labels are resampled on the INRs' own grid
    labels = torch.arange(6 * 10).reshape(1, 6, 10) % 19
    _, same = zoom_crop([p[:1] for p in params], labels, torch.ones(1), torch.zeros(1, 2), convention)
    assert torch.equal(same, labels)


def test_merge_accepts_old_and_new_names_but_not_two_conventions(tmp_path: Path) -> None:
    from izoo.archive.merge import merge_split

    legacy = "pixel centres in (-1, 1); channel 0 = x (column, left→right), channel 1 = y (row, top→bottom)"
    shards = [izoo_archive(tmp_path / f"train-{k:05d}.h5", n=3, first_index=3 * k) for k in range(2)]
    manifest = pd.DataFrame({"index": range(6), "split": "train", "item_id": [f"img{i}" for i in range(6)],
                             "label": [i % 3 for i in range(6)], "source_id": [f"toy/{i}.png" for i in range(6)],
                             "shard": [f"train-{i // 3:05d}" for i in range(6)]})
    with h5py.File(shards[0], "r+") as h5:
        h5.attrs["coordinate_convention"] = legacy       # a shard fitted before the conventions were named
    result = merge_split(manifest, "train", shards, tmp_path / "train.h5")
    with izoo.archive.open(result.path) as arch:
        assert len(arch) == 6 and arch.coordinate_convention == siren.PIXEL_CENTERS
    with h5py.File(shards[1], "r+") as h5:
        h5.attrs["coordinate_convention"] = siren.LINSPACE_ENDPOINTS
    with pytest.raises(IzooError, match="coordinate_convention differs"):
        merge_split(manifest, "train", shards, tmp_path / "again.h5")
