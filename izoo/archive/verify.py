"""``izoo verify`` and ``izoo inspect``: check an archive end to end, and summarise it.

What verify checks (each problem is one line; any problem → non-zero exit); 1–3 are
``izoo.archive.checks.check_structure``, which the merge also runs on what it wrote:

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

import izoo.archive.layout as layout
from izoo.archive.checks import check_structure, iterations_unknown
from izoo.archive.reader import InrArchive
from izoo.datasets.manifest import load_manifest
from izoo.errors import IzooError
from izoo.metrics import psnr as psnr_db
from izoo.siren import model as siren


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
        table = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest)
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


__all__ = ["VerifyReport", "verify_archive", "inspect_archive", "SourceImages"]
