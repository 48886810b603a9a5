"""NeRF archives for ``izoo.archive``: the ``nerf`` ``ArchiveFamily`` (spec, parameter order, render from the first
held-out camera) and ``NerfArchive``, an ``InrArchive`` of NeRFs with cameras, renders from any pose and density
grids. Reads shard weight files and merged archives alike, lazily (only the requested items).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

import izoo.archive.layout as layout
from izoo.archive.families import ArchiveFamily, register_archive_family
from izoo.archive.reader import InrArchive
from izoo.errors import IzooError
from izoo.nerf.model import NerfParams, NerfSpec
from izoo.nerf.render import DEFAULT_GRID_BOUND, query_grid, render_image

#: ``/extras`` names of each scene's held-out cameras, written by the ``nerf`` family and read here and by the pose
#: benchmark: poses ``[K, 4, 4]`` (NaN-padded), their view indices (-1 padded), focal, image height and width, class
CAMERA_EXTRAS = {"poses": "test_poses", "view_index": "test_view_index", "focal": "focal", "height": "height",
                 "width": "width", "class_name": "class_name"}


def spec_from_attrs(attrs: Mapping[str, Any]) -> NerfSpec:
    """The ``NerfSpec`` of the ``architecture`` attribute."""
    return NerfSpec.from_dict(attrs.get("architecture") or {})


def param_order(attrs: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """The spec's parameter order (trunk, then heads) when the file holds exactly those names, else layer order."""
    canonical = spec_from_attrs(attrs).param_names()
    return canonical if sorted(canonical) == sorted(names) else sorted(names, key=layout.param_sort_key)


class NerfArchive(InrArchive):
    """An open NeRF INR file: everything ``InrArchive`` reads, plus ``params(idx)`` by name, ``camera(i)``,
    ``render_pose(i, pose, ...)`` and ``grid(idx)``."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", in_memory: bool = False):
        super().__init__(path, device=device, in_memory=in_memory)
        if self.model_family != "nerf":
            self.close()
            raise IzooError(f"not an izoo NeRF file (model_family={self.model_family!r})", self.path,
                            "point at an archive of a dataset with model.family: nerf")
        rendering = self.attrs.get("rendering") or {}
        self.near = float(rendering.get("near", 2.0))
        self.far = float(rendering.get("far", 6.0))
        self.samples_per_ray = int(rendering.get("samples_per_ray", 64))

    def params(self, indices: Sequence[int] | slice | None = None) -> NerfParams:
        """Stacked weights ``name -> [n, ...]`` of the chosen items (all by default) on the archive's device."""
        return dict(zip(self.param_names, self.params_batch(slice(None) if indices is None else indices)))

    def camera(self, i: int) -> dict[str, Any]:
        """Held-out cameras of item ``i``: ``poses [K, 4, 4]`` (padding removed), ``view_index``, ``focal``, ``height``,
        ``width``, ``class_name``, ``label``."""
        one = lambda key: self.extras(CAMERA_EXTRAS[key], [i])[0]  # noqa: E731
        view_index = one("view_index")
        keep = view_index >= 0
        name = one("class_name") if CAMERA_EXTRAS["class_name"] in self.extra_names else b""
        return {"poses": torch.from_numpy(one("poses")[keep]), "view_index": view_index[keep],
                "focal": float(one("focal")), "height": int(one("height")), "width": int(one("width")),
                "class_name": name.decode() if isinstance(name, bytes) else str(name),
                "label": int(self.labels[i])}

    def render_pose(self, i: int, pose: torch.Tensor, height: int | None = None, width: int | None = None,
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


def render_held_out(archive: InrArchive, rows: np.ndarray, height: int, width: int) -> torch.Tensor:
    """``InrArchive.render`` of NeRFs: each scene ``[3, H, W]`` from its first archived held-out camera."""
    nerf = archive if isinstance(archive, NerfArchive) else NerfArchive(archive.path, device=archive.device)
    try:
        images = [nerf.render_pose(int(r), nerf.camera(int(r))["poses"][0], height, width) for r in rows]
    finally:
        if nerf is not archive:
            nerf.close()
    return torch.stack(images).permute(0, 3, 1, 2)


def open_nerf_archive(path: str | Path, device: torch.device | str = "cpu") -> NerfArchive:
    """Open a NeRF INR file (shard weights or merged archive) for reading."""
    return NerfArchive(path, device)


def camera_convention(attrs: Mapping[str, Any], path: Path) -> str:
    """The ``coordinate_convention`` attribute of a NeRF file: the text of its camera convention."""
    return str(attrs.get("coordinate_convention", ""))


# named functions, not lambdas: an InrArchive (and its family view) is pickled into spawned DataLoader workers
register_archive_family("nerf", ArchiveFamily(spec=spec_from_attrs, param_order=param_order,
                                              coordinate_convention=camera_convention, render=render_held_out))
