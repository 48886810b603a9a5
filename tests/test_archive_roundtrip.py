"""Fit → shard files → merge → open → render gives the stored PSNR; order, phases, loader, virtual archives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import izoo.archive
from izoo.archive.merge import merge_split
from izoo.metrics import psnr
from test_archive_fixtures import SIZE, build_toy, merge_args


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return build_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def train_archive(toy):
    result = merge_split(**merge_args(toy, "train", toy.root / "archive" / "train.h5"))
    assert result.n_items == 6
    return result.path



def test_reader_renders_with_only_izoo_archive_imported(toy, train_archive):
    """The archive layer imports no family: the siren view is imported by name on first use, and neither the
    fitting machinery nor the NeRF family comes along."""
    script = ("import sys, izoo.archive\n"
              f"arch = izoo.archive.open({str(train_archive)!r})\n"
              f"image = arch.render([0], {SIZE}, {SIZE})\n"
              "assert tuple(image.shape) == (1, 3, %d, %d), image.shape\n" % (SIZE, SIZE) +
              "print(sorted(m for m in sys.modules if m.startswith(('izoo.fitting', 'izoo.nerf', 'izoo.siren'))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['izoo.siren', 'izoo.siren.archive', 'izoo.siren.model']"


def test_round_trip_render_gives_stored_psnr(toy, train_archive):
    arch = izoo.archive.open(train_archive)
    assert len(arch) == 6
    assert arch.index.tolist() == [0, 1, 2, 3, 4, 5]  # manifest order although shards came reversed
    rendered = arch.render(list(range(6)), SIZE, SIZE)
    values = psnr(rendered, toy.images[:6])
    np.testing.assert_allclose(values.numpy(), arch.psnr, atol=1e-3)
    np.testing.assert_allclose(arch.psnr, [toy.expected_psnr[i] for i in range(6)], atol=1e-5)
    # any resolution: a 2x render is an image too
    assert arch.render([0, 5], 2 * SIZE, 3 * SIZE).shape == (2, 3, 2 * SIZE, 3 * SIZE)


def test_each_item_comes_from_its_last_phase(toy, train_archive):
    arch = izoo.archive.open(train_archive)
    items = arch.items
    assert items["phase"].tolist() == [toy.expected_phase[i] for i in range(6)]
    assert items["phase"][4] == "until_threshold" and items["iterations"][4] == 120
    for i in range(6):
        got = arch[i]["params"]
        for a, b in zip(got, toy.expected_params[i]):
            torch.testing.assert_close(a, b)
    assert arch.attrs["phase_counts"] == {"basic": 5, "until_threshold": 1}
    assert arch.attrs["split"] == "train" and arch.attrs["architecture"]["layer_shapes"]["layer0.weight"] == [16, 2]
    test = merge_split(**merge_args(toy, "test", toy.root / "archive" / "test.h5"))
    test_arch = izoo.archive.open(test.path)
    assert test_arch.index.tolist() == [6, 7] and test_arch.items["phase"].tolist() == ["extended", "basic"]


def test_getitem_batches_loader_and_label_maps_agree(train_archive):
    arch = izoo.archive.open(train_archive)
    item = arch[3]
    assert item["label"] == 0 and item["index"] == 3 and item["label_map"].shape == (SIZE, SIZE)
    assert arch.param_names == ["layer0.weight", "layer0.bias", "layer1.weight", "layer1.bias",
                                "layer2.weight", "layer2.bias"]
    batch = arch.params_batch([5, 1, 3])
    for k, p in enumerate(batch):
        torch.testing.assert_close(p[0], arch[5]["params"][k])
        torch.testing.assert_close(p[1], arch[1]["params"][k])
    assert arch.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert (arch.label_maps([4])[0] == 1).all()
    seen = []
    for b in arch.loader(batch_size=4, shuffle=True, seed=1):
        for k, row in enumerate(b["index"].tolist()):
            torch.testing.assert_close(b["params"][0][k], arch[row]["params"][0])
            assert b["label"][k].item() == arch.labels[row]
        seen += b["index"].tolist()
    assert sorted(seen) == list(range(6))
    ordered = [b["index"].tolist() for b in arch.loader(batch_size=4)]
    assert ordered == [[0, 1, 2, 3], [4, 5]]
    assert len(arch.loader(batch_size=4, drop_last=True)) == 1
    in_ram = izoo.archive.open(train_archive, in_memory=True)
    torch.testing.assert_close(in_ram.params_batch([2, 4])[3], arch.params_batch([2, 4])[3])


def test_virtual_archive_reads_the_same_items_from_another_cwd(toy, train_archive, tmp_path, monkeypatch):
    args = merge_args(toy, "train", toy.root / "archive" / "train-virtual.h5")
    result = merge_split(**args, virtual=True)
    assert result.bytes_on_disk < os.path.getsize(train_archive)
    monkeypatch.chdir(tmp_path)  # sources are relative to the archive's folder, not the cwd
    virtual = izoo.archive.open(result.path)
    copied = izoo.archive.open(train_archive)
    for a, b in zip(virtual.params_batch(list(range(6))), copied.params_batch(list(range(6)))):
        torch.testing.assert_close(a, b)
    np.testing.assert_array_equal(virtual.label_maps(), copied.label_maps())
    assert virtual.items["phase"].tolist() == copied.items["phase"].tolist()


def test_nerf_files_merge_generically_and_render(tmp_path):
    nerf_model = pytest.importorskip("izoo.nerf.model")
    from izoo.archive import layout
    from izoo.archive.merge import merge_split
    import pandas as pd

    spec = nerf_model.NerfSpec(depth=2, width=8, pos_freqs=2, dir_freqs=1)
    table = pd.DataFrame({"index": [0, 1, 2], "split": "train", "item_id": ["a", "b", "c"], "label": [0, 1, 1],
                          "source_id": ["a", "b", "c"], "shard": ["train-00000", "train-00000", "train-00001"]})
    pose = np.eye(4, dtype=np.float32)
    pose[2, 3] = 4.0  # camera on +z looking at the origin
    for shard, rows in (("train-00000", [0, 1]), ("train-00001", [2])):
        params = nerf_model.init_params(spec, [7 + r for r in rows])
        items = table.iloc[rows].assign(psnr=26.0, phase="basic", iterations=5, seconds=1.0, passed=True)
        extras = {"test_poses": np.stack([np.stack([pose, np.full((4, 4), np.nan, np.float32)])] * len(rows)),
                  "focal": np.full(len(rows), 10.0, np.float32), "height": np.full(len(rows), 8),
                  "width": np.full(len(rows), 8), "test_view_index": np.tile([96, -1], (len(rows), 1)),
                  "class_name": np.array([b"chair"] * len(rows), dtype="S64")}
        attrs = layout.base_attrs("nerf", spec.to_dict(), gate_psnr=25.0, rendering={"samples_per_ray": 8})
        layout.write_inr_file(tmp_path / f"{shard}.h5", {k: v.numpy() for k, v in params.items()}, items, attrs,
                              extras)
    out = merge_split(table, "train", [tmp_path / "train-00001.h5", tmp_path / "train-00000.h5"],
                      tmp_path / "train.h5").path
    arch = izoo.archive.open(out)
    assert arch.param_names == spec.param_names() and arch.spec == spec
    torch.testing.assert_close(arch[2]["params"][0], nerf_model.init_params(spec, [9])["layer0.weight"][0])
    assert arch.extras("class_name").tolist() == [b"chair"] * 3 and np.isnan(arch.extras("test_poses")[:, 1]).all()
    assert arch[1]["class_name"] == "chair"
    assert [b["class_name"] for b in arch.loader(batch_size=2, shuffle=True)][-1] == ["chair"]
    images = arch.render([0, 2], 4, 4)
    assert images.shape == (2, 3, 4, 4) and torch.isfinite(images).all()
    from izoo.archive.verify import verify_archive

    virtual = izoo.archive.open(merge_split(table, "train", [tmp_path / "train-00000.h5", tmp_path / "train-00001.h5"],
                                            tmp_path / "train-virtual.h5", virtual=True).path)
    assert virtual.extras("class_name").tolist() == [b"chair"] * 3
    torch.testing.assert_close(virtual.params_batch([0, 1, 2])[5], arch.params_batch([0, 1, 2])[5])
    report = verify_archive(out, manifest=table, sample=2)
    assert report.ok and any("render check skipped" in n for n in report.notes)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int64])
def test_parallel_chunk_writer_encodes_like_hdf5(tmp_path, dtype):
    from concurrent.futures import ThreadPoolExecutor

    import h5py

    from izoo.archive import layout
    from izoo.archive.merge import write_rows_compressed

    data = (np.random.default_rng(0).normal(0, 50, (10, 3, 5))).astype(dtype)
    with ThreadPoolExecutor(2) as pool, h5py.File(tmp_path / "c.h5", "w") as h5:
        ds = h5.create_dataset("x", shape=data.shape, dtype=dtype, chunks=(4, 3, 5), **layout.CODEC)
        write_rows_compressed(ds, 0, data[:8], pool)   # two whole chunks
        write_rows_compressed(ds, 8, data[8:], pool)   # the padded edge chunk
        plain = h5.create_dataset("y", data=data, chunks=(4, 3, 5), **layout.CODEC)
        np.testing.assert_array_equal(ds[:], data)
        np.testing.assert_array_equal(ds[3:9], plain[3:9])
        assert ds.id.read_direct_chunk((4, 0, 0))[1] == plain.id.read_direct_chunk((4, 0, 0))[1]


def test_multi_block_merge_matches_a_plain_assembly(tmp_path, monkeypatch):
    """1,100 items in two shards, merged in 512-item blocks (edge chunk included), refined rows scattered."""
    from izoo.archive import layout, merge
    from izoo.archive.merge import merge_split
    from izoo.siren import model as siren
    import pandas as pd

    n, spec = 1100, siren.SirenSpec(depth=2, width=4)
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"index": np.arange(n), "split": "train", "item_id": [f"i{k}" for k in range(n)],
                          "label": np.arange(n) % 7, "source_id": "s", "shard": np.where(np.arange(n) < 550,
                                                                                          "train-00000", "train-00001")})
    names = ["layer0.weight", "layer0.bias", "layer1.weight", "layer1.bias"]
    final = {name: rng.normal(size=(n, *shape)).astype(np.float32) for name, shape in zip(names, spec.param_shapes())}
    final_maps = rng.integers(0, 255, (n, 32, 32), dtype=np.uint8)
    phase = np.array(["basic"] * n, dtype=object)
    attrs = layout.base_attrs("siren", spec.to_dict(), gate_psnr=30.0)

    def write(path, rows, params, maps, phase_name):
        items = table.iloc[rows].assign(psnr=31.0, phase=phase_name, iterations=3, seconds=1.0, passed=True)
        layout.write_inr_file(path, {k: v[rows] for k, v in params.items()}, items, attrs, {"label_map": maps[rows]})

    refined = np.sort(rng.choice(n, 60, replace=False))
    stale = {k: v.copy() for k, v in final.items()}
    stale_maps = final_maps.copy()
    for k in stale:
        stale[k][refined] = 0.0  # what the basic shards hold for refined items: must be overridden
    write(tmp_path / "b0.h5", np.arange(550), stale, stale_maps, "basic")
    write(tmp_path / "b1.h5", np.arange(550, n), stale, stale_maps, "basic")
    write(tmp_path / "ext.h5", refined[::-1].copy(), final, final_maps, "extended")  # job order != manifest order
    phase[refined] = "extended"
    encoded = []
    deflate = merge._deflate_chunk
    monkeypatch.setattr(merge, "_deflate_chunk", lambda *a: encoded.append(1) or deflate(*a))
    out = merge_split(table, "train", [tmp_path / "b1.h5", tmp_path / "b0.h5"], tmp_path / "a.h5",
                      refined=[tmp_path / "ext.h5"], block_items=550).path
    arch = izoo.archive.open(out)
    for name, got in zip(arch.param_names, arch.params_batch(slice(None))):
        np.testing.assert_array_equal(got.numpy(), final[name])
    np.testing.assert_array_equal(arch.label_maps(), final_maps)
    assert arch.items["phase"].tolist() == phase.tolist()
    import h5py

    with h5py.File(out) as h5:
        assert {h5[f"params/{k}"].chunks[0] for k in names} == {512} and h5["extras/label_map"].chunks[0] == 256
    assert len(encoded) == 4 * 3 + 5  # every chunk compressed once, on the thread pool (3 per param, 5 label-map)
