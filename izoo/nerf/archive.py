"""NeRFs out of INR files (shard weight files or merged archives): weights, cameras, renders and 32³ grids.

Reads lazily with h5py (only the requested items), so it works on archives of thousands of scenes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import pandas as pd
import torch

from izoo.archive import layout
from izoo.errors import IzooError
from izoo.nerf.model import NerfParams, NerfSpec
from izoo.nerf.render import DEFAULT_GRID_BOUND, query_grid, render_image


class NerfArchive:
    """An open NeRF INR file: ``len``, ``items`` table, ``params(idx)``, ``camera(i)``, ``render(...)``, ``grid(idx)``."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu"):
        self.path = Path(path)
        self.device = torch.device(device)
        if not self.path.exists():
            raise IzooError("NeRF archive is missing", self.path, "run the fitting/merge rules that write it")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise IzooError(f"NeRF archive is corrupt or not HDF5 ({exc})", self.path,
                            "delete it and rerun the job that writes it") from exc
        self.attrs = layout.decode_attrs(self._h5.attrs)
        if self.attrs.get("format") != layout.FORMAT or self.attrs.get("model_family") != "nerf":
            self.close()
            raise IzooError(f"not an izoo NeRF file (format={self.attrs.get('format')!r}, "
                            f"model_family={self.attrs.get('model_family')!r})", self.path,
                            "point at an archive of a dataset with model.family: nerf")
        self.spec = NerfSpec.from_dict(self.attrs.get("architecture") or {})
        rendering = self.attrs.get("rendering") or {}
        self.near = float(rendering.get("near", 2.0))
        self.far = float(rendering.get("far", 6.0))
        self.samples_per_ray = int(rendering.get("samples_per_ray", 64))
        self.items: pd.DataFrame = layout.read_items(self._h5)

    def __len__(self) -> int:
        return len(self.items)

    def __enter__(self) -> "NerfArchive":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the HDF5 file."""
        self._h5.close()

    def _select(self, indices: Sequence[int] | slice | None) -> np.ndarray:
        n = len(self.items)
        if indices is None:
            return np.arange(n)
        if isinstance(indices, slice):
            return np.arange(n)[indices]
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"item index out of range 0..{n - 1}")
        return idx

    def params(self, indices: Sequence[int] | slice | None = None) -> NerfParams:
        """Stacked weights ``name -> [n, ...]`` of the chosen items (all by default) on the archive's device."""
        idx = self._select(indices)
        order = np.argsort(idx, kind="stable")  # h5py fancy indexing needs increasing indices
        out: NerfParams = {}
        for name in self.spec.param_names():
            data = self._h5[f"params/{name}"][np.sort(idx).tolist()] if len(idx) else np.zeros((0,))
            restored = np.empty_like(data)
            restored[order] = data
            out[name] = torch.from_numpy(restored).to(self.device)
        return out

    def camera(self, i: int) -> dict[str, Any]:
        """Held-out cameras of item ``i``: ``poses [K, 4, 4]`` (padding removed), ``view_index``, ``focal``, ``height``, ``width``."""
        ex = self._h5["extras"]
        view_index = ex["test_view_index"][i]
        keep = view_index >= 0
        name = ex["class_name"][i] if "class_name" in ex else b""
        return {"poses": torch.from_numpy(ex["test_poses"][i][keep]), "view_index": view_index[keep],
                "focal": float(ex["focal"][i]), "height": int(ex["height"][i]), "width": int(ex["width"][i]),
                "class_name": name.decode() if isinstance(name, bytes) else str(name),
                "label": int(self.items["label"].iloc[i])}

    def render(self, i: int, pose: torch.Tensor, height: int | None = None, width: int | None = None,
               focal: float | None = None, n_samples: int | None = None) -> torch.Tensor:
        """Render item ``i`` from any camera-to-world ``pose`` → ``[H, W, 3]`` (defaults: the archived intrinsics)."""
        cam = self.camera(i) if (height is None or width is None or focal is None) else None
        h = height if height is not None else cam["height"]
        w = width if width is not None else cam["width"]
        f = focal if focal is not None else cam["focal"] * (w / cam["width"])
        one = {k: v[0] for k, v in self.params([i]).items()}
        return render_image(one, self.spec, pose, h, w, f, self.near, self.far, n_samples or self.samples_per_ray)

    def grid(self, indices: Sequence[int] | slice | None = None, resolution: int = 32,
             bound: float = DEFAULT_GRID_BOUND) -> torch.Tensor:
        """RGB + density grids ``[n, 4, R, R, R]`` of the chosen items (see ``izoo.nerf.render.query_grid``)."""
        return query_grid(self.params(indices), self.spec, resolution=resolution, bound=bound)


def open_nerf_archive(path: str | Path, device: torch.device | str = "cpu") -> NerfArchive:
    """Open a NeRF INR file (shard weights or merged archive) for reading."""
    return NerfArchive(path, device)
