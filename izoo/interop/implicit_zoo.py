"""``izoo import implicit-zoo``: the paper's released SIRENs (Implicit-Zoo layout) → one izoo archive per split.

The released layout, as its public generator (``experiments/generate_cifar_dataset_siren.py``) writes it, one
folder per generator run::

    RUN/ckpts/{label:02d}/{image_idx:06d}_{seed:07d}.ckpt    torch.save({"image_idx": int, "params": state_dict})
    RUN/{start}_{end}.json                                    {"<image_idx>": psnr, ...}

``image_idx`` counts from the run's ``start`` (the generator enumerates ``Subset(dataset, range(start, end))``), so
an item's index in its split is ``start + image_idx``. State-dict keys are ``seq.{i}.weight`` ``[out, in]`` and
``seq.{i}.bias`` ``[out]``: sine layers ``sin(30 (W x + b))`` then a linear head, no sigmoid, fitted to
ImageNet-normalised pixels on ``linspace(-1, 1, N)`` coordinates *including the end points* with the column
coordinate first. The archive keeps the weights bit for bit (layer ``i`` = ``seq.{i}``) and records
``coordinate_convention = linspace_endpoints``, so every izoo consumer decodes them on the released grid. The
released PSNR (measured before the last optimiser step, on unclamped pixels) is kept as given in
``/extras/released_psnr``; with the source images (``source_cfg``) izoo re-measures ``/items/psnr`` on the stored
weights, and the archive's ``source`` attribute plus the manifest written beside it let ``izoo verify`` re-check it.

Checkpoints are read with ``torch.load(weights_only=True)``: a pickle that needs anything but tensors and plain
containers is refused, never executed.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
import torch

from izoo.archive import layout
from izoo.atomic import atomic_path, ensure_free_space
from izoo.datasets.base import BadItem
from izoo.datasets.manifest import BAD_COLUMNS, COLUMNS, csv_bytes, shard_id
from izoo.errors import BadItemError, IzooError
from izoo.metrics import psnr as psnr_db
from izoo.siren import model as siren

log = logging.getLogger(__name__)

FORMAT_NAME = "implicit-zoo"
#: the released generator's sine frequency (``Siren(w0=30.0)``, not stored in the checkpoints)
RELEASED_W0 = 30.0
#: the released generator keeps fitting an image until it reaches 30 dB
RELEASED_GATE_PSNR = 30.0
#: the released generator's seed when ``seed.random_seed`` is off (every image starts from the same init)
RELEASED_SHARED_SEED = 42
CKPT_NAME = re.compile(r"^(\d+)_(\d+)\.ckpt$")
PSNR_NAME = re.compile(r"^(\d+)_(-?\d+)\.json$")
#: the released ``INR`` holds its layers in ``self.seq`` (an ``nn.Sequential``): keys ``seq.{i}.weight``/``bias``
STATE_PREFIX = "seq"
STATE_KEY = re.compile(r"^seq\.(\d+)\.(weight|bias)$")
#: checkpoints loaded, checked and written per block (bounds memory by one block, not the dataset)
BLOCK_ITEMS = 1024
SKIP_FIX = "or set on_bad_item: skip (--on-bad-item skip) to import the rest and list it in bad_items.csv"


@dataclass
class Checkpoint:
    """One released checkpoint file, located by its folder and name (not loaded yet)."""

    path: Path
    run: Path
    label: int
    image_idx: int
    seed: int
    index: int            # item index in its split: the run's start + image_idx
    released_psnr: float


@dataclass
class ImportResult:
    """What ``import_implicit_zoo`` wrote."""

    archive: Path
    manifest: Path
    bad_items: Path
    n_items: int
    n_bad: int
    psnr_measured_by: str


class _BadItems:
    """Collects bad items under ``skip``; raises the first one under ``error``."""

    def __init__(self, split: str, on_bad_item: str):
        if on_bad_item not in ("error", "skip"):
            raise IzooError(f"on_bad_item must be 'error' or 'skip' (got {on_bad_item!r})", None,
                            "pass --on-bad-item error or --on-bad-item skip")
        self.split, self.mode, self.items = split, on_bad_item, []

    def add(self, exc: BadItemError, item_id: str = "") -> None:
        if self.mode == "error":
            raise exc
        log.warning("skipping bad item: %s", exc)
        self.items.append(BadItem(self.split, item_id, exc.path or "", exc.what))


def state_dict_key(layer: int, kind: str) -> str:
    """The released ``INR.state_dict()`` key of layer ``layer``'s ``weight``/``bias`` (``INR.seq`` is an nn.Sequential)."""
    return f"{STATE_PREFIX}.{layer}.{kind}"


def find_runs(roots: Sequence[str | Path]) -> list[Path]:
    """Generator run folders (each holding ``ckpts/``): the roots themselves, or their sub-folders that hold one."""
    runs: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise IzooError("released Implicit-Zoo folder does not exist", root,
                            "pass the folder holding ckpts/ and the {start}_{end}.json PSNR file")
        if (root / "ckpts").is_dir():
            runs.append(root)
            continue
        found = sorted(p for p in root.iterdir() if (p / "ckpts").is_dir())
        if not found:
            raise IzooError("not a released Implicit-Zoo folder: no ckpts/ in it or in its sub-folders", root,
                            "pass the generator's output folder (ckpts/{label:02d}/{index:06d}_{seed:07d}.ckpt "
                            "and {start}_{end}.json)")
        runs.extend(found)
    return runs


def read_psnr_table(run: Path) -> tuple[int, int, Path, dict[str, Any]]:
    """The run's ``{start}_{end}.json``: start, end, its path and ``{image_idx: psnr}``; ``BadItemError`` if unusable."""
    files = sorted(p for p in run.iterdir() if p.is_file() and PSNR_NAME.match(p.name))
    if not files:
        raise BadItemError("no PSNR file {start}_{end}.json beside ckpts/ (it also gives the run's first index)",
                           run, "copy the run's {start}_{end}.json back into this folder, " + SKIP_FIX)
    if len(files) > 1:
        raise BadItemError(f"several PSNR files ({', '.join(p.name for p in files)}): the run's first index is "
                           "ambiguous", run, "keep one generator run per folder, " + SKIP_FIX)
    path = files[0]
    start, end = (int(v) for v in PSNR_NAME.match(path.name).groups())
    try:
        table = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadItemError(f"unreadable PSNR file ({type(exc).__name__}: {exc})", path,
                           "restore it from the released data, " + SKIP_FIX) from None
    if not isinstance(table, dict):
        raise BadItemError(f"PSNR file holds a {type(table).__name__}, expected {{\"image_idx\": psnr}}", path,
                           "restore it from the released data, " + SKIP_FIX)
    return start, end, path, table


def list_checkpoints(runs: Sequence[Path], bad: _BadItems) -> list[Checkpoint]:
    """Every released checkpoint of the runs with its split index and released PSNR; bad ones go to ``bad``."""
    found: list[Checkpoint] = []
    for run in runs:
        try:
            start, end, json_path, table = read_psnr_table(run)
        except BadItemError as exc:
            bad.add(exc)
            continue
        for folder in sorted((run / "ckpts").iterdir()):
            if not folder.is_dir():
                continue
            if not folder.name.isdigit():
                bad.add(BadItemError("label folder is not a number (expected ckpts/{label:02d}/)", folder,
                                     "rename it to its class label, " + SKIP_FIX))
                continue
            for path in sorted(folder.glob("*.ckpt")):
                match = CKPT_NAME.match(path.name)
                if not match:
                    bad.add(BadItemError("checkpoint name is not {image_idx:06d}_{seed:07d}.ckpt", path,
                                         "restore the released file name, " + SKIP_FIX))
                    continue
                image_idx, seed = int(match.group(1)), int(match.group(2))
                value = table.get(str(image_idx))
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    bad.add(BadItemError(f"no PSNR for image_idx {image_idx} in {json_path.name}", path,
                                         "restore the run's PSNR file, " + SKIP_FIX))
                    continue
                if end >= 0 and not start + image_idx < end:
                    bad.add(BadItemError(f"image_idx {image_idx} lies outside the run's range {start}..{end}", path,
                                         "move it to the folder of the run that wrote it, " + SKIP_FIX))
                    continue
                found.append(Checkpoint(path, run, int(folder.name), image_idx, seed, start + image_idx,
                                        float(value)))
    return found


def _one_per_image(found: list[Checkpoint], seed: int | None) -> list[Checkpoint]:
    """One checkpoint per split index (the ``seed`` one when given), in index order."""
    if seed is not None:
        found = [c for c in found if c.seed == seed]
    by_index: dict[int, list[Checkpoint]] = {}
    for ckpt in found:
        by_index.setdefault(ckpt.index, []).append(ckpt)
    for index, group in by_index.items():
        if len(group) > 1:
            raise IzooError(f"{len(group)} checkpoints for item {index} (seeds {sorted(c.seed for c in group)}; "
                            f"e.g. {group[1].path}): the released PSNR file keeps one PSNR per image", group[0].path,
                            "pass --seed S to import one seed, or import each run folder separately")
    return [by_index[i][0] for i in sorted(by_index)]


def _refusal(exc: BaseException) -> str:
    """The informative line of torch's multi-line ``weights_only`` refusal."""
    text = str(exc)
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if match:
        return f"it needs {match.group(1)}"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def load_checkpoint(path: Path) -> tuple[int, list[np.ndarray]]:
    """``(image_idx, [w0, b0, w1, b1, ...])`` of one released checkpoint; ``BadItemError`` naming the file if not a SIREN."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise BadItemError(f"torch.load(weights_only=True) refuses this pickle ({_refusal(exc)}); izoo never executes "
                           "pickled code", path, "re-save it as {'image_idx': int, 'params': state_dict} of plain "
                           "tensors, " + SKIP_FIX) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BadItemError(f"corrupt or truncated checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})",
                           path, "restore it from the released data, " + SKIP_FIX) from None
    fix = "pass a released Implicit-Zoo SIREN checkpoint ({'image_idx', 'params': INR.state_dict()}), " + SKIP_FIX
    if not isinstance(obj, Mapping) or not isinstance(obj.get("params"), Mapping):
        raise BadItemError(f"checkpoint is a {type(obj).__name__} without a 'params' state dict", path, fix)
    image_idx = obj.get("image_idx")
    if isinstance(image_idx, torch.Tensor) and image_idx.numel() == 1:
        image_idx = int(image_idx.item())
    if not isinstance(image_idx, int):
        raise BadItemError(f"checkpoint has no integer 'image_idx' (got {type(image_idx).__name__})", path, fix)
    return image_idx, _state_to_params(obj["params"], path, fix)


def _state_to_params(state: Mapping[str, Any], path: Path, fix: str) -> list[np.ndarray]:
    """``seq.{i}.weight``/``bias`` of the released ``INR`` → ``[w0, b0, ...]`` float32, shapes checked as a SIREN."""
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = STATE_KEY.match(str(key))
        if not match or not isinstance(value, torch.Tensor):
            raise BadItemError(f"state dict key {key!r} is not seq.{{i}}.weight/bias of a tensor", path, fix)
        layers.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if sorted(layers) != list(range(len(layers))) or len(layers) < 2 or \
            any(set(v) != {"weight", "bias"} for v in layers.values()):
        raise BadItemError(f"state dict layers {sorted(layers)} are not seq.0..seq.N-1 each with weight and bias "
                           f"(keys: {sorted(map(str, state))[:8]})", path, fix)
    params: list[np.ndarray] = []
    fan_in = 2
    for i in range(len(layers)):
        w, b = layers[i]["weight"], layers[i]["bias"]
        if w.dim() != 2 or w.shape[1] != fan_in or b.shape != (w.shape[0],):
            raise BadItemError(f"seq.{i}.weight {list(w.shape)} / bias {list(b.shape)} do not chain as a SIREN with "
                               f"{fan_in} inputs", path, fix)
        fan_in = w.shape[0]
        params += [w.detach().float().numpy(), b.detach().float().numpy()]
    widths = {p.shape[0] for p in params[0:-2:2]}
    if len(widths) != 1 or params[-2].shape[0] != 3:
        raise BadItemError(f"layer widths {[p.shape[0] for p in params[::2]]} are not one hidden width and 3 outputs",
                           path, fix)
    if not all(np.isfinite(p).all() for p in params):
        raise BadItemError("checkpoint holds NaN/Inf weights", path, "refit that image, " + SKIP_FIX)
    return params


def _spec_of(params: list[np.ndarray], w0: float) -> siren.SirenSpec:
    return siren.SirenSpec(depth=len(params) // 2, width=int(params[0].shape[0]), w0=float(w0), init="released")


@dataclass
class _Loaded:
    ckpt: Checkpoint
    params: list[np.ndarray]
    item_id: str
    source_id: str
    source_ref: Any = None


def import_implicit_zoo(roots: Sequence[str | Path], out: str | Path, split: str, dataset: str | None = None,
                        source_cfg: Mapping[str, Any] | None = None, seed: int | None = None,
                        on_bad_item: str = "error", gate_psnr: float = RELEASED_GATE_PSNR, w0: float = RELEASED_W0,
                        manifest_out: str | Path | None = None, bad_items_out: str | Path | None = None,
                        device: torch.device | str = "cpu") -> ImportResult:
    """Turn released Implicit-Zoo run folders into the izoo archive ``out`` (+ its manifest and bad-item list)."""
    out = Path(out)
    manifest_out = Path(manifest_out) if manifest_out else out.with_name(f"{out.stem}.manifest.csv")
    bad_items_out = Path(bad_items_out) if bad_items_out else out.with_name(f"{out.stem}.bad_items.csv")
    bad = _BadItems(split, on_bad_item)
    chosen = _one_per_image(list_checkpoints(find_runs(roots), bad), seed)
    if not chosen and not bad.items:
        raise IzooError("no released checkpoints found (ckpts/{label:02d}/*.ckpt)" +
                        (f" of seed {seed}" if seed is not None else ""), Path(roots[0]),
                        "pass the generator's output folder" + (" and a seed it used" if seed is not None else ""))
    source, refs = None, None
    if source_cfg is not None:
        from izoo.datasets.registry import open_source  # the source reader only when re-measuring

        source = open_source(dict(source_cfg))
        refs = source.list_items(split)
        skipped = source.bad_items(split)
        if skipped:
            # released indices count every image of the split: a skipped source item would shift all later ones
            raise IzooError(f"the source split {split!r} has {len(skipped)} unreadable items (e.g. "
                            f"{skipped[0].source_id}: {skipped[0].error}), so released indices cannot be matched",
                            source.root, "repair the source dataset, or import without --dataset-config")
    dev = torch.device(device)
    spec: siren.SirenSpec | None = None
    first_path: Path | None = None
    names: list[str] = []
    rows: list[dict[str, Any]] = []
    written = 0
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as h5:
            for start in range(0, len(chosen), BLOCK_ITEMS):
                block: list[_Loaded] = []
                for ckpt in chosen[start:start + BLOCK_ITEMS]:
                    try:
                        loaded = _load_item(ckpt, split, refs)
                        if spec is None:
                            spec, first_path = _spec_of(loaded.params, w0), ckpt.path
                            names = [f"layer{k // 2}.{'weight' if k % 2 == 0 else 'bias'}"
                                     for k in range(2 * spec.depth)]
                            ensure_free_space(tmp, len(chosen) * 4 * spec.n_params())
                            layout.create_datasets(h5, dict(zip(names, spec.param_shapes())), len(chosen),
                                                   {"released_psnr": ((), np.float32)})
                        elif _spec_of(loaded.params, w0) != spec:
                            raise BadItemError(f"architecture {_spec_of(loaded.params, w0)} differs from "
                                               f"{first_path}'s {spec}", ckpt.path,
                                               "import checkpoints of one architecture at a time, " + SKIP_FIX)
                    except BadItemError as exc:
                        bad.add(exc, f"{split}-{ckpt.index:06d}")
                        continue
                    block.append(loaded)
                if not block:
                    continue
                psnr = _measure(block, spec, source, dev) if source is not None else \
                    np.array([b.ckpt.released_psnr for b in block], dtype=np.float32)
                items = pd.DataFrame({
                    "index": [b.ckpt.index for b in block], "item_id": [b.item_id for b in block],
                    "source_id": [b.source_id for b in block], "split": split,
                    "label": [b.ckpt.label for b in block], "psnr": psnr, "phase": "basic",
                    # the released checkpoints record neither steps nor time (imported_from says so)
                    "iterations": 0, "seconds": 0.0, "passed": psnr >= float(gate_psnr)})
                params = {name: np.stack([b.params[k] for b in block]) for k, name in enumerate(names)}
                released = {"released_psnr": np.array([b.ckpt.released_psnr for b in block], dtype=np.float32)}
                layout.write_rows(h5, written, params, items, released)
                written += len(block)
                rows += [{"index": b.ckpt.index, "split": split, "item_id": b.item_id, "label": b.ckpt.label,
                          "source_id": b.source_id, "shard": shard_id(split, 0)} for b in block]
                log.info("imported %d / %d checkpoints (%d bad)", written, len(chosen), len(bad.items))
            if spec is None:
                raise IzooError(f"no usable checkpoint ({len(bad.items)} bad; see the warnings)", Path(roots[0]),
                                "fix the files named above")
            for group in ("params", "items", "extras"):
                for ds in h5[group].values():
                    ds.resize(written, axis=0)
            h5.attrs.update(layout.encode_attrs(_attrs(spec, chosen, written, split, dataset, source_cfg,
                                                       gate_psnr, [str(Path(r)) for r in roots])))
    _write_csv(manifest_out, COLUMNS, [tuple(r[c] for c in COLUMNS) for r in rows])
    _write_csv(bad_items_out, BAD_COLUMNS, [tuple(b.as_dict()[c] for c in BAD_COLUMNS) for b in bad.items])
    return ImportResult(out, manifest_out, bad_items_out, written, len(bad.items),
                        "izoo" if source is not None else "released")


def _write_csv(path: Path, columns: list[str], rows: list[tuple]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(csv_bytes(columns, rows))


def _load_item(ckpt: Checkpoint, split: str, refs: list | None) -> _Loaded:
    """Load and check one checkpoint; with a source, match it to the source item of its index (label checked)."""
    image_idx, params = load_checkpoint(ckpt.path)
    if image_idx != ckpt.image_idx:
        raise BadItemError(f"checkpoint says image_idx {image_idx}, its file name {ckpt.image_idx}", ckpt.path,
                           "restore the released file, " + SKIP_FIX)
    if refs is None:
        return _Loaded(ckpt, params, f"{split}-{ckpt.index:06d}", str(ckpt.path))
    if ckpt.index >= len(refs):
        raise BadItemError(f"item {ckpt.index} lies beyond the source split {split!r} ({len(refs)} items)", ckpt.path,
                           "import against the split the run was generated from, " + SKIP_FIX)
    ref = refs[ckpt.index]
    if int(ref.label) != ckpt.label:
        raise BadItemError(f"label folder {ckpt.label} but source item {ref.item_id} has label {ref.label}: the "
                           "checkpoint belongs to another image or split", ckpt.path,
                           "import against the split the run was generated from, " + SKIP_FIX)
    return _Loaded(ckpt, params, ref.item_id, ref.source_id, ref)


def _measure(block: list[_Loaded], spec: siren.SirenSpec, source: Any, device: torch.device) -> np.ndarray:
    """izoo's PSNR of each stored INR against its source image (rendered on the released grid, clamped)."""
    out = np.empty(len(block), dtype=np.float32)
    by_shape: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
    for k, item in enumerate(block):
        image = source.load(item.source_ref).image
        if image is None:
            raise IzooError(f"source item {item.item_id} has no image", item.ckpt.path,
                            "import against an image dataset's source")
        by_shape.setdefault(tuple(image.shape), []).append((k, image))
    for (_, height, width), group in by_shape.items():
        rows = [k for k, _ in group]
        images = torch.stack([img for _, img in group]).to(device, torch.float32)
        params = [torch.from_numpy(np.stack([block[k].params[j] for k in rows])).to(device)
                  for j in range(2 * spec.depth)]
        rendered = siren.render(params, spec, height, width, convention=siren.LINSPACE_ENDPOINTS)
        out[rows] = psnr_db(rendered, images).cpu().numpy()
    return out


def _attrs(spec: siren.SirenSpec, chosen: list[Checkpoint], n_items: int, split: str, dataset: str | None,
           source_cfg: Mapping[str, Any] | None, gate_psnr: float, roots: list[str]) -> dict[str, Any]:
    from izoo.siren.family import SirenFamily  # the family that owns the architecture/normalisation attributes

    family = SirenFamily(spec.to_dict())
    seeds = {c.seed for c in chosen}
    attrs = layout.base_attrs("siren", family.architecture(), **family.file_attrs())
    attrs.update({
        "coordinate_convention": siren.LINSPACE_ENDPOINTS,
        "dataset": dataset or f"{FORMAT_NAME}-{split}",
        "split": split,
        "n_items": int(n_items),
        "phase_counts": {"basic": int(n_items)},
        "gate_psnr": float(gate_psnr),
        "seed_mode": "shared" if len(seeds) == 1 else "per_item",
        "fitting": {"origin": "released Implicit-Zoo checkpoints; their fitting settings are not recorded in them",
                    "seeds": sorted(seeds)[:16]},
        "psnr_measured_by": "izoo" if source_cfg is not None else "released",
        "imported_from": {
            "format": FORMAT_NAME, "roots": roots, "iterations": "unknown", "seconds": "unknown",
            "released_psnr": "extras/released_psnr: the generator's PSNR, measured before its last optimiser step, "
                             "on unclamped de-normalised pixels",
            "layer_names": {f"layer{i}": f"{STATE_PREFIX}.{i}" for i in range(spec.depth)},
        },
    })
    if source_cfg is not None:
        attrs["source"] = dict(source_cfg)
    return attrs


def describe(result: ImportResult) -> str:
    """One line per output for the command line."""
    how = "re-measured by izoo against the source images" if result.psnr_measured_by == "izoo" else \
        "the released values (pass --dataset-config to re-measure against the source images)"
    return "\n".join([f"{result.archive}: {result.n_items} items; /items/psnr is {how}",
                      f"{result.manifest}: manifest of the imported items (izoo verify --manifest)",
                      f"{result.bad_items}: {result.n_bad} bad items" + (" skipped" if result.n_bad else "")])


__all__ = ["import_implicit_zoo", "find_runs", "load_checkpoint", "ImportResult", "describe", "RELEASED_W0",
           "state_dict_key"]
