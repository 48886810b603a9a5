"""``izoo verify`` and ``izoo inspect``: check an archive end to end, and summarise it.

What verify checks (each problem is one line; any problem → non-zero exit):

1. structure: izoo format attribute, required attributes, every ``/params`` ``/items`` ``/extras`` dataset with
   one row per item, parameter shapes equal to the ``architecture`` attribute (the SIREN layer shapes), the
   source files of a virtual archive present;
2. counts against the manifest (``--manifest``): the split's items, in manifest order, with the same item ids,
   labels and source ids; without a manifest, indices must be unique;
3. values: no NaN/Inf in any weight (every item, streamed chunk by chunk), finite PSNRs, ``passed`` equal to
   ``psnr >= gate_psnr``, known phases, iterations >= 1;
4. a re-render of ``--sample`` random items. With the source images (``--manifest`` plus the archive's ``source``
   attribute readable by ``izoo.datasets``), each item is rendered at its source resolution and its PSNR against
   the source image must match the stored PSNR within ``--tolerance`` dB. Without them the archive holds nothing
   to compare against (deliberately: no reference pixels are stored), so verify only checks that the raw render
   is finite and mostly inside [0, 1] (a fitted image is; a tampered or exploded INR is not) — a weaker check,
   reported as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import h5py
import numpy as np
import pandas as pd
import torch

from izoo.archive import layout
from izoo.archive.merge import read_manifest
from izoo.archive.reader import (InrArchive, coordinate_convention_of, param_sort_key, spec_from_attrs,
                                 virtual_source_problems)
from izoo.errors import IzooError
from izoo.metrics import psnr as psnr_db
from izoo.siren import model as siren


REQUIRED_ATTRS = ("format", "format_version", "model_family", "architecture", "izoo_version", "created")
#: rows per NaN-scan read are sized to about this many bytes
SCAN_BYTES = 64 << 20
#: without source images: share of raw rendered values that must lie in [-RANGE_SLACK, 1 + RANGE_SLACK]
IN_RANGE_SHARE = 0.9
RANGE_SLACK = 0.25
#: render resolution when neither the source nor the attributes give one
DEFAULT_RENDER_SIZE = (32, 32)

#: ``source_image(manifest_row) -> [C, H, W]`` float tensor in [0, 1], or None when that item has no image
SourceImages = Callable[[Mapping[str, Any]], torch.Tensor | None]


@dataclass
class VerifyReport:
    """Problems (each one line; empty = OK) and notes (what was checked and how)."""

    path: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def fix(self) -> str:
        """What to do about the problems: an archive is only ever rebuilt from its shard files."""
        return (f"delete {self.path} and rerun the workflow (or izoo merge), which rebuilds it from the shard files; "
                "if the problem comes back, the shard files are at fault: run izoo verify on each file in the "
                "archive's merged_from attribute, delete the ones that fail and rerun (their jobs refit them)")

    def lines(self) -> list[str]:
        """The report as ``izoo verify`` prints it: notes, one line per problem, the verdict, and the fix."""
        out = [f"{self.path}: {note}" for note in self.notes]
        out += [f"{self.path}: PROBLEM: {problem}" for problem in self.problems]
        out.append(f"{self.path}: {'OK' if self.ok else f'FAILED ({len(self.problems)} problems)'}")
        if not self.ok:
            out.append(f"{self.path}: fix: {self.fix}")
        return out


def _split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    return manifest[manifest["split"].astype(str) == str(split)].reset_index(drop=True)


def _first(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def check_structure(path: str | Path, manifest: pd.DataFrame | str | Path | None = None,
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


def _check_open(h5: h5py.File, path: Path, manifest: pd.DataFrame | str | Path | None,
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
        elif layout.shared_init_sha256({k: shared[k] for k in sorted(shared, key=param_sort_key)}) != \
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

    for name in sorted(h5["params"], key=param_sort_key) if scan_weights else []:
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


def _check_manifest(items: pd.DataFrame, attrs: Mapping[str, Any], manifest: pd.DataFrame | str | Path) -> list[str]:
    table = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
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


def _render_size(attrs: Mapping[str, Any]) -> tuple[int, int]:
    """Render resolution from the attributes (``image_size``/``resolution``: int or [H, W]), else the default."""
    for key in ("image_size", "resolution"):
        value = attrs.get(key)
        if value is None:
            fitting = attrs.get("fitting")
            value = fitting.get(key) if isinstance(fitting, dict) else None
        if isinstance(value, (int, float)):
            return int(value), int(value)
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return int(value[0]), int(value[1])
    return DEFAULT_RENDER_SIZE


def source_images_from_config(source_cfg: Mapping[str, Any] | None) -> tuple[SourceImages | None, str]:
    """A source-image reader for a dataset's ``source:`` config section, or None and why not."""
    if not isinstance(source_cfg, Mapping):
        return None, "no source config (pass --dataset-config, or an archive with a 'source' attribute)"
    try:
        from izoo.datasets.registry import open_source
    except ImportError as exc:
        return None, f"izoo.datasets is unavailable ({exc})"
    try:
        source = open_source(source_cfg)
    except (IzooError, OSError, KeyError, ValueError) as exc:
        return None, f"the source dataset cannot be opened ({exc})"

    def load(row: Mapping[str, Any]) -> torch.Tensor | None:
        return source.load(dict(row)).image

    return load, f"source {source_cfg.get('format', '?')} at {source_cfg.get('root', '?')}"


def _check_renders(archive: InrArchive, manifest: pd.DataFrame | None, sample: int, tolerance: float, seed: int,
                   source_images: SourceImages | None, report: VerifyReport) -> None:
    if sample <= 0 or len(archive) == 0:
        report.notes.append("render check skipped (--sample 0)")
        return
    if archive.model_family != "siren":
        report.notes.append(f"render check skipped: model family {archive.model_family!r} is verified by its own "
                            "tools (held-out views are not in the archive)")
        return
    rows = np.sort(np.random.default_rng(seed).choice(len(archive), size=min(sample, len(archive)), replace=False))
    index = archive.index
    stored = archive.psnr
    if source_images is not None and manifest is not None and archive.attrs.get("psnr_measured_by") == "released":
        report.notes.append("stored PSNRs are the released ones (measured before the last optimiser step, unclamped), "
                            "not izoo's: not compared with the source; re-import with the source "
                            "(--dataset-config) to have izoo re-measure them")
        source_images = None
    if source_images is not None and manifest is not None:
        by_index = manifest.set_index("index")
        checked = 0
        for row in rows:
            meta = by_index.loc[int(index[row])].to_dict() | {"index": int(index[row])}
            try:
                image = source_images(meta)
            except (IzooError, OSError, ValueError) as exc:
                report.problems.append(f"source image of index {int(index[row])} is unreadable ({exc})")
                continue
            if image is None:
                continue
            image = image.to(archive.device, torch.float32)
            rendered = archive.render([int(row)], image.shape[-2], image.shape[-1])
            value = float(psnr_db(rendered, image.unsqueeze(0))[0])
            checked += 1
            if not abs(value - float(stored[row])) <= tolerance:
                report.problems.append(f"item index {int(index[row])}: stored PSNR {float(stored[row]):.2f} dB, "
                                       f"re-rendered {value:.2f} dB against the source image (tolerance {tolerance} dB)")
        report.notes.append(f"re-rendered {checked} sampled items against their source images (tolerance {tolerance} dB)")
        return
    height, width = _render_size(archive.attrs)
    params = archive.params_batch(rows)
    coords = archive.coordinate_grid(height, width)
    with torch.no_grad():
        raw = siren.denormalise_rgb(siren.forward(params, coords, archive.spec.w0))
    raw = raw.reshape(len(rows), -1)
    finite = torch.isfinite(raw).all(dim=1).cpu().numpy()
    in_range = ((raw >= -RANGE_SLACK) & (raw <= 1 + RANGE_SLACK)).float().mean(dim=1).cpu().numpy()
    for k, row in enumerate(rows):
        if not finite[k]:
            report.problems.append(f"item index {int(index[row])}: render is not finite")
        elif in_range[k] < IN_RANGE_SHARE:
            report.problems.append(f"item index {int(index[row])}: only {in_range[k]:.0%} of the rendered values lie "
                                   f"in [0, 1] (±{RANGE_SLACK}); a fitted image has >= {IN_RANGE_SHARE:.0%}")
    report.notes.append(f"rendered {len(rows)} sampled items at {height}x{width} ({archive.coordinate_convention}) "
                        f"without source images: checked "
                        "finite and in range only (pass --manifest with a readable source to compare PSNR)")


def verify_archive(path: str | Path, manifest: str | Path | pd.DataFrame | None = None, sample: int = 16,
                   tolerance: float = 0.1, seed: int = 0, source_images: SourceImages | None = None,
                   source_cfg: Mapping[str, Any] | None = None, device: torch.device | str = "cpu") -> VerifyReport:
    """Every check of ``izoo verify``; source images come from ``source_images``, else ``source_cfg``, else the
    archive's ``source`` attribute (PSNR re-check only with a manifest, which maps items to source files)."""
    path = Path(path)
    report = VerifyReport(path)
    table = None
    if manifest is not None:
        table = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
    report.problems += check_structure(path, table)
    if report.problems:
        return report
    archive = InrArchive(path, device=device)
    try:
        report.notes.append(f"{len(archive)} items: structure, manifest counts, NaN/Inf weights and gate flags "
                            f"checked{'' if table is not None else ' (no manifest given)'}")
        if source_images is None and table is not None:
            source_images, why = source_images_from_config(source_cfg if source_cfg is not None
                                                           else archive.attrs.get("source"))
            if source_images is None:
                report.notes.append(f"no source images ({why})")
        _check_renders(archive, table, sample, tolerance, seed, source_images if table is not None else None, report)
    finally:
        archive.close()
    return report


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def inspect_archive(path: str | Path) -> str:
    """A plain-text summary table of an archive: items, classes, PSNR, phases, size, attributes."""
    path = Path(path)
    with InrArchive(path) as archive:
        items = archive.items
        attrs = archive.attrs
        n = len(items)
        rows: list[tuple[str, str]] = [("archive", str(path)), ("dataset / split", f"{attrs.get('dataset', '?')} / "
                                                                                    f"{attrs.get('split', '?')}"),
                                       ("items", f"{n}")]
        labels = items["label"].to_numpy()
        labelled = labels[labels >= 0]
        if len(labelled):
            _, counts = np.unique(labelled, return_counts=True)
            rows.append(("classes", f"{len(counts)} (items per class {counts.min()}..{counts.max()})"))
        else:
            rows.append(("classes", "none (unlabelled)"))
        psnr = items["psnr"].to_numpy(dtype=np.float64)
        gate = attrs.get("gate_psnr")
        if n:
            rows.append(("PSNR dB mean / std", f"{psnr.mean():.2f} / {psnr.std():.2f}"))
            rows.append(("PSNR dB min / median / max", f"{psnr.min():.2f} / {np.median(psnr):.2f} / {psnr.max():.2f}"))
            share = items["passed"].to_numpy(dtype=bool).mean()
            rows.append((f"passing the gate ({gate} dB)" if gate is not None else "passing the gate",
                         f"{share:.1%} ({int(items['passed'].sum())} items)"))
        phases = items["phase"].value_counts()
        rows.append(("phases", ", ".join(f"{p} {int(phases.get(p, 0))}" for p in layout.PHASES if p in phases)
                     or "none"))
        if n and iterations_unknown(attrs):
            rows.append(("iterations, fitting time", "unknown (imported: the source format does not record them)"))
        elif n:
            its = items["iterations"].to_numpy()
            rows.append(("iterations mean / max", f"{its.mean():.0f} / {its.max()}"))
            rows.append(("fitting time", f"{items['seconds'].sum() / 3600:.2f} GPU-hours "
                         f"({items['seconds'].mean():.2f} s per item)"))
        shapes = ", ".join(f"{k} {list(archive.param_shapes[k])}" for k in archive.param_names)
        n_params = sum(math.prod(s) for s in archive.param_shapes.values())
        rows.append(("model", f"{archive.model_family} {shapes} ({n_params} parameters per item)"))
        if archive.extra_names:
            with h5py.File(path, "r") as h5:
                rows.append(("extras", ", ".join(f"{k} {list(h5['extras/' + k].shape[1:])} {h5['extras/' + k].dtype}"
                                                 for k in archive.extra_names)))
        size = path.stat().st_size
        virtual = bool(attrs.get("virtual"))
        rows.append(("size on disk", f"{_fmt_bytes(size)}" + (f" ({_fmt_bytes(size / n)} per item)" if n else "")
                     + (" — virtual: weights stay in the shard files" if virtual else "")))
        for key in sorted(attrs):
            if key in ("format", "dataset", "split", "merged_from", "phase_counts", "n_items", "virtual",
                       "virtual_sources"):
                continue
            value = attrs[key]
            text = str(value) if not isinstance(value, (dict, list)) else layout.encode_attrs({key: value})[key]
            rows.append((f"attr {key}", text if len(text) <= 160 else text[:157] + "..."))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


__all__ = ["VerifyReport", "check_structure", "verify_archive", "inspect_archive", "SourceImages"]
