"""``izoo export``: state-dict folders and fit-a-nef HDF5 round-trip to the archive's own renders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import izoo.archive
from izoo.archive import layout
from izoo.cli import main
from izoo.interop.export import export_archive
from izoo.interop.implicit_zoo import import_implicit_zoo
from izoo.siren import model as siren
from released_layout import ReleasedINR, write_run

SPEC = siren.SirenSpec(depth=4, width=12, w0=30.0)


def izoo_archive(path: Path, n: int = 5, first_index: int = 10) -> Path:
    """A pixel-centre SIREN archive of random INRs (what ``izoo merge`` writes, minus the fitting)."""
    params = siren.init_params(SPEC, list(range(n)))
    names = [f"layer{k // 2}.{'weight' if k % 2 == 0 else 'bias'}" for k in range(2 * SPEC.depth)]
    rows = np.arange(first_index, first_index + n)
    items = pd.DataFrame({"index": rows, "item_id": [f"img{i}" for i in rows],
                          "source_id": [f"toy/{i}.png" for i in rows], "split": "train",
                          "label": rows % 3, "psnr": np.linspace(25, 35, n), "phase": "basic",
                          "iterations": 100, "seconds": 1.0, "passed": np.linspace(25, 35, n) >= 30})
    attrs = layout.base_attrs("siren", SPEC.to_dict(), coordinate_convention=siren.COORDINATE_CONVENTION,
                              normalisation={"mean": list(siren.IMAGENET_MEAN), "std": list(siren.IMAGENET_STD)},
                              dataset="toy", split="train", gate_psnr=30.0)
    return layout.write_inr_file(path, {k: p.numpy() for k, p in zip(names, params)}, items, attrs)


def read_fit_a_nef(folder: Path) -> tuple[list[dict[str, np.ndarray]], np.ndarray, dict]:
    """Unflatten a fit-a-nef file the way its ``unflatten_params`` does: slices in ``param_config`` order."""
    (path,) = folder.glob("nefs_*.hdf5")
    with h5py.File(path, "r") as h5:
        flat, labels = h5["params"][:], h5["labels"][:]
        config = json.loads(h5["param_config"][0])
    nets = []
    for row in flat:
        net, offset = {}, 0
        for name, shape in config:
            size = int(np.prod(shape))
            net[name] = row[offset:offset + size].reshape(shape)
            offset += size
        assert offset == len(row)
        nets.append(net)
    return nets, labels, json.loads((folder / "nef.json").read_text())


def flax_siren(net: dict[str, np.ndarray], coords: np.ndarray, num_layers: int, omega_0: float) -> np.ndarray:
    """fit-a-nef's SIREN: ``sin(omega_0 * Dense(x))`` per ``kernel_net_i``, then ``output_linear`` (x @ kernel + bias)."""
    h = coords.astype(np.float64)
    for i in range(num_layers - 1):
        h = np.sin(omega_0 * (h @ net[f"kernel_net_{i}.linear.kernel"] + net[f"kernel_net_{i}.linear.bias"]))
    return h @ net["output_linear.kernel"] + net["output_linear.bias"]


def fit_a_nef_grid(size: int) -> np.ndarray:
    """fit-a-nef's ``load_images`` coordinates: linspace(-1, 1) with end points, ``meshgrid(x, y)``."""
    x, y = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size))
    return np.stack([x, y], axis=-1).reshape(size * size, 2)


def test_state_dicts_load_into_the_released_inr_bit_for_bit(tmp_path: Path) -> None:
    models = write_run(tmp_path / "run", 0, [2, 0, 1], n_layers=4, hidden=8)
    archive = import_implicit_zoo([tmp_path / "run"], tmp_path / "train.h5", "train").archive
    result = export_archive(archive, tmp_path / "out", "state-dicts")
    assert [p.name for p in result.files] == ["000000.pth", "000001.pth", "000002.pth"]
    for index, path in enumerate(result.files):
        state = torch.load(path, weights_only=True)
        model = ReleasedINR(n_layers=4, hidden=8)
        model.load_state_dict(state, strict=True)
        assert all(torch.equal(state[k], v) for k, v in models[index].state_dict().items())
    doc = json.loads((tmp_path / "out" / "conventions.json").read_text())
    assert doc["coordinate_convention"] == "linspace_endpoints" and doc["model"]["w0"] == 30.0
    assert "linspace" in (tmp_path / "out" / "README.md").read_text()
    with open(tmp_path / "out" / "items.csv") as fh:
        assert [int(r["label"]) for r in csv.DictReader(fh)] == [2, 0, 1]


@pytest.mark.parametrize("convert", [False, True])
def test_fit_a_nef_round_trip(tmp_path: Path, convert: bool) -> None:
    path = izoo_archive(tmp_path / "train.h5")
    size = 8
    kwargs = {"convention": siren.LINSPACE_ENDPOINTS, "resolution": (size, size)} if convert else {}
    export_archive(path, tmp_path / "nef", "fit-a-nef", **kwargs)
    nets, labels, nef_cfg = read_fit_a_nef(tmp_path / "nef")
    assert nef_cfg == {"name": "SIREN", "params": {"hidden_dim": 12, "num_layers": 4, "omega_0": 30.0, "output_dim": 3}}
    with izoo.archive.open(path) as arch:
        assert labels.tolist() == arch.labels.tolist()
        # the archive's own decoding: its pixel-centre grid
        expected = siren.forward(arch.params_batch(slice(None)), arch.coordinate_grid(size, size), SPEC.w0).numpy()
    # converted weights decode on fit-a-nef's linspace grid; unconverted ones on the archive's grid
    grid = fit_a_nef_grid(size) if convert else siren.coordinate_grid(size, size).numpy()
    got = np.stack([flax_siren(net, grid, 4, 30.0) for net in nets])
    assert np.abs(got - expected).max() < 1e-5
    doc = json.loads((tmp_path / "nef" / "conventions.json").read_text())
    assert doc["coordinate_convention"] == ("linspace_endpoints" if convert else "pixel_centers")
    assert ("converted" in doc) == convert


def test_export_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    path = izoo_archive(tmp_path / "train.h5")
    rc = main(["export", str(path), "--format", "fit-a-nef", "--out", str(tmp_path / "x"),
               "--convention", "linspace_endpoints"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--resolution" in err and str(path) in err
    assert main(["export", str(tmp_path / "missing.h5"), "--format", "state-dicts", "--out", str(tmp_path / "y")]) == 2
    assert "archive is missing" in capsys.readouterr().err


def test_cli_says_when_the_weights_need_converting_for_the_format(tmp_path: Path, capsys) -> None:
    path = izoo_archive(tmp_path / "train.h5")
    assert main(["export", str(path), "--format", "fit-a-nef", "--out", str(tmp_path / "a")]) == 0
    assert "--convention linspace_endpoints" in capsys.readouterr().out
    assert main(["export", str(path), "--format", "fit-a-nef", "--out", str(tmp_path / "b"),
                 "--convention", "linspace_endpoints", "--resolution", "8", "8"]) == 0
    assert "note:" not in capsys.readouterr().out
    assert "h5py.File('nefs_0-5.hdf5')" in (tmp_path / "b" / "README.md").read_text()
