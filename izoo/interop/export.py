"""``izoo export ARCHIVE --format {state-dicts,fit-a-nef}``: an izoo SIREN archive in the formats weight-space code reads.

``state-dicts``: ``OUT/{index:06d}.pth``, one plain ``torch.save`` state dict per item with the released
Implicit-Zoo ``INR`` keys ``seq.{i}.weight`` ``[out, in]`` / ``seq.{i}.bias`` ``[out]`` (what DWSNets/NFN-style
loaders and the released code's ``INR.load_state_dict`` read).

``fit-a-nef``: ``OUT/nefs_0-{N}.hdf5`` as fit-a-nef's ``SignalTrainer.save`` writes it: ``params`` ``[N, P]`` float32
(each item's tensors flattened and concatenated in ``param_config`` order: per layer bias then kernel, as its
``SIREN_key`` sorts them), ``param_config`` (one JSON string: ``[[name, shape], ...]`` with flax names
``kernel_net_{i}.linear.{bias,kernel}``, ``output_linear.{bias,kernel}``; kernels are ``[in, out]``, the transpose
of izoo's weights) and ``labels`` ``[N]``; plus fit-a-nef's ``nef.json`` model config.

Both write ``items.csv`` (row → index, item id, label, PSNR), ``conventions.json`` and ``README.md``: the SIREN
variant, coordinate grid, input order, normalisation and output offset needed to decode the weights. Weights are
exported as stored unless ``convention`` asks for the other coordinate grid at one ``resolution`` (exact there:
only the first layer is rescaled, see ``siren.change_convention``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from izoo.archive.reader import InrArchive
from izoo.atomic import atomic_path, ensure_free_space
from izoo.datasets.manifest import csv_bytes
from izoo.errors import IzooError
from izoo.interop.implicit_zoo import state_dict_key
from izoo.siren import model as siren

log = logging.getLogger(__name__)

FORMATS = ("state-dicts", "fit-a-nef")
#: the grid each format's own code decodes on (both read the weights on linspace(-1, 1) with the end points)
NATIVE_CONVENTION = {"state-dicts": siren.LINSPACE_ENDPOINTS, "fit-a-nef": siren.LINSPACE_ENDPOINTS}
CONVENTIONS_FILE = "conventions.json"
README_FILE = "README.md"
ITEMS_FILE = "items.csv"
ITEM_COLUMNS = ["row", "file", "index", "item_id", "split", "label", "psnr"]
#: items exported per block (bounds memory by one block)
BLOCK_ITEMS = 4096


@dataclass
class ExportResult:
    """What ``export_archive`` wrote."""

    out_dir: Path
    format: str
    n_items: int
    files: list[Path]
    convention: str


def fit_a_nef_names(depth: int) -> list[tuple[str, str]]:
    """``(flax name, izoo name)`` of every tensor in fit-a-nef's ``param_config`` order (per layer: bias, kernel)."""
    names = []
    for layer in range(depth):
        module = "output_linear" if layer == depth - 1 else f"kernel_net_{layer}.linear"
        names += [(f"{module}.bias", f"layer{layer}.bias"), (f"{module}.kernel", f"layer{layer}.weight")]
    return names


def conventions(archive: InrArchive, convention: str, resolution: tuple[int, int] | None) -> dict[str, Any]:
    """Everything needed to decode the exported weights, as one JSON-able dict."""
    spec = archive.spec
    doc: dict[str, Any] = {
        "source_archive": str(archive.path),
        "dataset": archive.attrs.get("dataset"), "split": archive.attrs.get("split"), "n_items": len(archive),
        "model": {"family": "SIREN", "depth": spec.depth, "width": spec.width, "w0": spec.w0,
                  "in_features": spec.in_features, "out_features": spec.out_features,
                  "layers": f"{spec.depth} linear layers; every layer but the last is sin(w0 * (W x + b)) with the "
                            "same w0 (first layer included); the last is linear: no sigmoid, no output offset"},
        "coordinate_convention": convention,
        "coordinates": siren.COORDINATE_CONVENTIONS[convention],
        "input_order": "input 0 = x (column, left to right), input 1 = y (row, top to bottom); pixels row-major",
        "normalisation": {**(archive.attrs.get("normalisation") or {}),
                          "decode": "rgb01 = clamp(output * std + mean, 0, 1) per channel (ImageNet mean/std)"},
        "psnr": "items.csv psnr: dB on de-normalised [0, 1] pixels, prediction clamped (izoo.metrics.psnr)",
    }
    if convention != archive.coordinate_convention:
        doc["converted"] = {"from": archive.coordinate_convention, "resolution": list(resolution or ()),
                            "note": "first-layer weights rescaled so the image at this resolution decodes on this grid; "
                                    "other resolutions differ slightly from izoo's render"}
    if "imported_from" in archive.attrs:
        doc["imported_from"] = archive.attrs["imported_from"]
    return doc


def _readme(fmt: str, doc: dict[str, Any], file_name: str) -> str:
    model = doc["model"]
    if fmt == "state-dicts":
        load = ("```python\nimport torch\nstate = torch.load('000000.pth', weights_only=True)  # seq.{i}.weight [out, in], "
                "seq.{i}.bias [out]\n# the released Implicit-Zoo INR(image_size, in_dim=2, n_layers=%d, up_scale=%d, "
                "out_channels=3).load_state_dict(state)\n```\n" % (model["depth"], model["width"] // 2))
    else:
        load = ("```python\nimport h5py, json\nf = h5py.File('%s')\nparams, config = f['params'][:], "
                "json.loads(f['param_config'][0])\n# fit_a_nef.utils.unflatten_params(config, params) -> flax SIREN "
                "params (num_layers=%d, hidden_dim=%d, omega_0=%g)\n```\n" % (file_name, model["depth"], model["width"],
                                                                             model["w0"]))
    return (f"# izoo export ({fmt})\n\n{doc['n_items']} SIRENs of `{doc['source_archive']}` "
            f"(dataset {doc['dataset']}, split {doc['split']}); `items.csv` maps each to its item.\n\n"
            f"- **Model**: {model['layers']}; width {model['width']}, w0 {model['w0']:g}.\n"
            f"- **Coordinates** (`{doc['coordinate_convention']}`): {doc['coordinates']}. {doc['input_order']}.\n"
            f"- **Normalisation**: outputs are ImageNet-normalised RGB, mean {doc['normalisation'].get('mean')}, "
            f"std {doc['normalisation'].get('std')}: {doc['normalisation']['decode']}.\n\n{load}\n"
            f"Every convention, machine-readable: `{CONVENTIONS_FILE}`.\n")


def export_archive(archive_path: str | Path, out_dir: str | Path, fmt: str, convention: str | None = None,
                   resolution: tuple[int, int] | None = None) -> ExportResult:
    """Write the archive's SIRENs to ``out_dir`` in ``fmt`` (``FORMATS``) with its conventions beside them."""
    if fmt not in FORMATS:
        raise IzooError(f"unknown export format {fmt!r}", None, f"use one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    with InrArchive(archive_path) as archive:
        if archive.spec is None:
            raise IzooError(f"export needs a SIREN archive, not {archive.model_family!r}", archive.path,
                            "export a 2D image archive (model_family siren)")
        target = archive.coordinate_convention if convention is None else convention
        if target not in siren.COORDINATE_CONVENTIONS:
            raise IzooError(f"unknown coordinate convention {target!r}", None,
                            f"use one of {', '.join(sorted(siren.COORDINATE_CONVENTIONS))}")
        if target != archive.coordinate_convention and not resolution:
            raise IzooError(f"converting {archive.coordinate_convention} weights to {target} needs the image size",
                            archive.path, "pass --resolution HEIGHT WIDTH (the size the INRs will be decoded at)")
        ensure_free_space(out_dir / CONVENTIONS_FILE, len(archive) * 4 * archive.spec.n_params())
        doc = conventions(archive, target, resolution)
        write = _write_state_dicts if fmt == "state-dicts" else _write_fit_a_nef
        files = write(archive, out_dir, target, resolution)
        items = archive.items
        names = [f.name for f in files] if fmt == "state-dicts" else [files[0].name] * len(archive)
        rows = [(k, names[k], int(items["index"][k]), items["item_id"][k], items["split"][k], int(items["label"][k]),
                 float(items["psnr"][k])) for k in range(len(archive))]
        _write_bytes(out_dir / ITEMS_FILE, csv_bytes(ITEM_COLUMNS, rows))
        _write_bytes(out_dir / CONVENTIONS_FILE, (json.dumps(doc, indent=2) + "\n").encode())
        _write_bytes(out_dir / README_FILE, _readme(fmt, doc, files[0].name if files else "").encode())
        return ExportResult(out_dir, fmt, len(archive), files, target)


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _blocks(archive: InrArchive, target: str, resolution: tuple[int, int] | None):
    """``(first row, params [w0, b0, ...] as CPU tensors)`` block by block, in ``target``'s convention."""
    for start in range(0, len(archive), BLOCK_ITEMS):
        params = archive.params_batch(slice(start, min(start + BLOCK_ITEMS, len(archive))))
        if target != archive.coordinate_convention:
            height, width = resolution
            params = siren.change_convention(params, archive.coordinate_convention, target, height, width)
        yield start, [p.cpu() for p in params]


def _write_state_dicts(archive: InrArchive, out_dir: Path, target: str,
                       resolution: tuple[int, int] | None) -> list[Path]:
    files: list[Path] = []
    index = archive.index
    for start, params in _blocks(archive, target, resolution):
        for k in range(params[0].shape[0]):
            state = {state_dict_key(j // 2, "weight" if j % 2 == 0 else "bias"): p[k].clone()
                     for j, p in enumerate(params)}
            path = out_dir / f"{int(index[start + k]):06d}.pth"
            with atomic_path(path) as tmp:
                torch.save(state, tmp)
            files.append(path)
        log.info("exported %d / %d state dicts", len(files), len(archive))
    return files


def _write_fit_a_nef(archive: InrArchive, out_dir: Path, target: str,
                     resolution: tuple[int, int] | None) -> list[Path]:
    spec = archive.spec
    order = fit_a_nef_names(spec.depth)
    position = {name: k for k, name in enumerate(archive.param_names)}
    shapes = {name: archive.param_shapes[name] for name in archive.param_names}
    config = [[flax, list(shapes[ours][::-1])] for flax, ours in order]   # kernels are [in, out]
    n = len(archive)
    path = out_dir / f"nefs_0-{n}.hdf5"
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            flat = h5.create_dataset("params", shape=(n, spec.n_params()), dtype=np.float32)
            for start, params in _blocks(archive, target, resolution):
                pieces = []
                for _, ours in order:
                    tensor = params[position[ours]]
                    tensor = tensor.transpose(1, 2) if tensor.dim() == 3 else tensor   # [B, out, in] → [B, in, out]
                    pieces.append(tensor.reshape(tensor.shape[0], -1))
                flat[start:start + pieces[0].shape[0]] = torch.cat(pieces, dim=1).numpy()
            h5.create_dataset("param_config", (1,), dtype=h5py.string_dtype())[0] = json.dumps(config)
            h5.create_dataset("labels", data=archive.labels.astype(np.int64))
    nef_cfg = {"name": "SIREN", "params": {"hidden_dim": spec.width, "num_layers": spec.depth, "omega_0": spec.w0,
                                           "output_dim": spec.out_features}}
    _write_bytes(out_dir / "nef.json", (json.dumps(nef_cfg, indent=2) + "\n").encode())
    return [path]
