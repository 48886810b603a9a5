"""What the attributes of an INR file mean, and the structure checks every archive passes (``check_structure``):
shared by the reader, the merge (which checks what it wrote) and ``izoo verify``.

SIREN facts live here because the SIREN model (``izoo.siren.model``) sits below the archive layer; anything a
family above it knows (NeRF specs, renderers) comes through ``izoo.archive.families``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import pandas as pd

import izoo.archive.layout as layout
from izoo.errors import IzooError
from izoo.siren import model as siren

REQUIRED_ATTRS = ("format", "format_version", "model_family", "architecture", "izoo_version", "created")
#: rows per NaN-scan read are sized to about this many bytes
SCAN_BYTES = 64 << 20


def spec_from_attrs(attrs: Mapping[str, Any]) -> siren.SirenSpec | None:
    """The ``SirenSpec`` an archive's ``architecture`` attribute describes (None for other families)."""
    if attrs.get("model_family", "siren") != "siren":
        return None
    arch = attrs.get("architecture") or {}
    fields = {f.name for f in dataclasses.fields(siren.SirenSpec)}
    return siren.SirenSpec(**{k: v for k, v in arch.items() if k in fields})


#: what izoo wrote as ``coordinate_convention`` before the attribute named one of ``siren.COORDINATE_CONVENTIONS``
LEGACY_PIXEL_CENTRES_TEXT = "pixel centres in (-1, 1)"


def coordinate_convention_of(attrs: Mapping[str, Any], path: str | Path | None = None) -> str:
    """The SIREN coordinate convention an archive records (``pixel_centers`` when it predates the attribute)."""
    value = attrs.get("coordinate_convention")
    if value is None or (isinstance(value, str) and value.startswith(LEGACY_PIXEL_CENTRES_TEXT)):
        return siren.PIXEL_CENTERS
    if value not in siren.COORDINATE_CONVENTIONS:
        raise IzooError(f"unknown coordinate_convention attribute {value!r} (known: "
                        f"{sorted(siren.COORDINATE_CONVENTIONS)})", path,
                        "set it to one of those names (h5py: f.attrs['coordinate_convention'] = ...)")
    return str(value)


def virtual_source_problems(h5: h5py.File, folder: Path, thorough: bool = True) -> list[str]:
    """One line per source file a virtual dataset maps onto that does not exist (it would read as fill values).

    ``thorough`` lists every mapping of every virtual dataset (ImageNet: ~10^5 per dataset, seconds); otherwise
    only the files of the ``virtual_sources`` attribute written by the merge are checked (instant; ``open``).
    """
    files: dict[str, str] = {}
    if not thorough and "virtual_sources" in h5.attrs:
        for name in layout.decode_attrs({"m": h5.attrs["virtual_sources"]})["m"]:
            files.setdefault(str(name), "/params")
    else:
        for group in ("params", "extras"):
            for name, ds in (h5[group].items() if group in h5 else []):
                if not ds.is_virtual:
                    continue
                # the creation property list names each mapping's file without building h5py's selection objects
                dcpl = ds.id.get_create_plist()
                for k in range(dcpl.get_virtual_count()):
                    files.setdefault(dcpl.get_virtual_filename(k), f"{group}/{name}")
    problems = []
    for file_name, ds_name in files.items():
        src = Path(file_name)
        resolved = src if src.is_absolute() else folder / src
        if not resolved.exists():
            problems.append(f"virtual dataset {ds_name} maps onto missing file {resolved}")
    return problems


def _split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    return manifest[manifest["split"].astype(str) == str(split)].reset_index(drop=True)


def _first(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def check_structure(path: str | Path, manifest: pd.DataFrame | None = None,
                    scan_weights: bool = True) -> list[str]:
    """Structure, manifest counts and value checks of an archive (no rendering); one line per problem.

    ``scan_weights`` reads every weight to find NaN/Inf (the merge skips it: it checked each block in memory).
    """
    path = Path(path)
    if not path.exists():
        return [f"archive {path} does not exist"]
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        return [f"cannot open as HDF5 (truncated or not an archive): {exc}"]
    try:
        return _check_open(h5, path, manifest, scan_weights)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        return [f"unreadable dataset ({type(exc).__name__}: {exc})"]
    finally:
        h5.close()


def _check_open(h5: h5py.File, path: Path, manifest: pd.DataFrame | None,
                scan_weights: bool) -> list[str]:
    problems: list[str] = []
    attrs = layout.decode_attrs(h5.attrs)
    if attrs.get("format") != layout.FORMAT:
        return [f"format attribute is {attrs.get('format')!r}, not {layout.FORMAT!r}"]
    missing_attrs = [a for a in REQUIRED_ATTRS if a not in attrs]
    if missing_attrs:
        problems.append(f"attributes missing: {missing_attrs}")
    for group in ("params", "items"):
        if group not in h5:
            return problems + [f"group /{group} is missing"]
    missing_cols = [c for c in layout.ITEM_COLUMNS if c not in h5["items"]]
    if missing_cols:
        return problems + [f"item columns missing: {missing_cols}"]
    n = h5["items/index"].shape[0]
    datasets = {f"params/{k}": v for k, v in h5["params"].items()}
    datasets.update({f"items/{k}": h5[f"items/{k}"] for k in layout.ITEM_COLUMNS})
    if "extras" in h5:
        datasets.update({f"extras/{k}": v for k, v in h5["extras"].items()})
    for key, ds in datasets.items():
        if ds.shape[0] != n:
            problems.append(f"{key} has {ds.shape[0]} rows, the archive {n} items")
    if problems:
        return problems
    problems += virtual_source_problems(h5, path.parent)

    if "learned_init" in attrs:   # items started from a learned init: the stored init must be that init
        shared = layout.read_shared_init(h5)
        if shared is None:
            problems.append("learned_init attribute set but the /shared_init group is missing")
        elif layout.shared_init_sha256({k: shared[k] for k in sorted(shared, key=layout.param_sort_key)}) != \
                attrs["learned_init"].get("sha256"):
            problems.append("/shared_init does not match the learned_init sha256 attribute")

    # architecture: the stored layer shapes must be what the spec says
    try:
        spec = spec_from_attrs(attrs)
    except (TypeError, ValueError) as exc:
        spec = None
        problems.append(f"architecture attribute is not a valid SIREN spec ({exc})")
    if attrs.get("model_family", "siren") == "siren":
        try:
            coordinate_convention_of(attrs)
        except IzooError as exc:
            problems.append(exc.what)
    actual = {k: tuple(v.shape[1:]) for k, v in h5["params"].items()}
    if spec is not None:
        expected: dict[str, tuple[int, ...]] = {}
        for k, shape in enumerate(spec.param_shapes()):
            expected[f"layer{k // 2}.{'weight' if k % 2 == 0 else 'bias'}"] = tuple(shape)
        if expected != actual:
            problems.append(f"parameter shapes {actual} differ from the architecture's {expected}")
    declared = (attrs.get("architecture") or {}).get("layer_shapes") if isinstance(attrs.get("architecture"), dict) else None
    if isinstance(declared, dict) and {k: tuple(v) for k, v in declared.items()} != actual:
        problems.append(f"parameter shapes {actual} differ from the layer_shapes attribute {declared}")

    items = layout.read_items(h5)
    index = items["index"].to_numpy()
    if len(np.unique(index)) != n:
        problems.append("items/index holds duplicate manifest indices")
    if manifest is not None:
        problems += _check_manifest(items, attrs, manifest)

    psnr = items["psnr"].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(psnr))
    if len(bad):
        problems.append(f"items/psnr is NaN/Inf for {len(bad)} items (index {_first(index[bad])})")
    gate = attrs.get("gate_psnr")
    if gate is not None and not isinstance(gate, (dict, list)):
        wrong = np.flatnonzero((psnr >= float(gate)) != items["passed"].to_numpy(dtype=bool))
        wrong = wrong[np.isfinite(psnr[wrong])]
        if len(wrong):
            problems.append(f"items/passed disagrees with psnr >= gate_psnr {float(gate):g} dB for {len(wrong)} items "
                            f"(index {_first(index[wrong])})")
    phases = items["phase"].to_numpy(dtype=str)
    unknown = np.flatnonzero(~np.isin(phases, layout.PHASES))
    if len(unknown):
        problems.append(f"items/phase is not one of {list(layout.PHASES)} for {len(unknown)} items "
                        f"(e.g. {phases[unknown[0]]!r} at index {index[unknown[0]]})")
    few = np.flatnonzero(items["iterations"].to_numpy() < 1)
    if len(few) and not iterations_unknown(attrs):
        problems.append(f"items/iterations < 1 for {len(few)} items (index {_first(index[few])})")

    for name in sorted(h5["params"], key=layout.param_sort_key) if scan_weights else []:
        ds = h5[f"params/{name}"]
        per_item = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize)
        step = max(1, SCAN_BYTES // per_item)
        if ds.chunks:
            step = max(ds.chunks[0], step // ds.chunks[0] * ds.chunks[0])
        bad_rows: list[np.ndarray] = []
        for start in range(0, n, step):
            block = ds[start:start + step]
            finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
            bad_rows.append(np.flatnonzero(~finite) + start)
        bad = np.concatenate(bad_rows) if bad_rows else np.empty(0, dtype=np.int64)
        if len(bad):
            problems.append(f"params/{name} has NaN/Inf weights in {len(bad)} items (index {_first(index[bad])})")
    return problems


def iterations_unknown(attrs: Mapping[str, Any]) -> bool:
    """Whether the archive was imported from a format that does not record optimisation steps (stored as 0)."""
    imported = attrs.get("imported_from")
    return isinstance(imported, dict) and imported.get("iterations") == "unknown"


def _check_manifest(items: pd.DataFrame, attrs: Mapping[str, Any], table: pd.DataFrame) -> list[str]:
    split = attrs.get("split")
    if split is None:
        return ["attribute 'split' is missing, so the archive cannot be checked against the manifest"]
    want = _split_rows(table, str(split))
    if len(want) != len(items):
        have = set(items["index"].tolist())
        missing = [i for i in want["index"].tolist() if i not in have]
        return [f"holds {len(items)} items, the manifest's split {split!r} {len(want)}"
                + (f" (missing index {_first(np.array(missing))})" if missing else "")]
    problems = []
    if not np.array_equal(items["index"].to_numpy(), want["index"].to_numpy(dtype=np.int64)):
        k = int(np.flatnonzero(items["index"].to_numpy() != want["index"].to_numpy(dtype=np.int64))[0])
        problems.append(f"item order differs from the manifest at row {k} (index {items['index'][k]}, "
                        f"manifest {want['index'][k]})")
        return problems
    for col in ("item_id", "label", "source_id", "split"):
        if col not in want.columns:
            continue
        ours = items[col].astype(str).to_numpy()
        theirs = want[col].astype(str).to_numpy()
        diff = np.flatnonzero(ours != theirs)
        if len(diff):
            k = diff[0]
            problems.append(f"items/{col} differs from the manifest for {len(diff)} items (index "
                            f"{items['index'][k]}: {ours[k]!r} vs {theirs[k]!r})")
    return problems
