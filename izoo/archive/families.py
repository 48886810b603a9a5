"""How the archive reader sees each model family: its model spec, parameter order, coordinates and renderer.

The archive layer sits below the model families, so it never imports one: a family registers an
``ArchiveFamily`` when its archive module is imported (``izoo.siren.archive``, ``izoo.nerf.archive``), and
``archive_family(name)`` imports a built-in family's module by its path on first use. So
``izoo.archive.open(path).render(...)`` works for a user who imported only ``izoo.archive``, and a new family
needs only its own module (plus an entry in ``_BUILTIN`` if it ships with izoo).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

#: ``render(archive, rows, height, width) -> [B, C, H, W]`` in [0, 1] (``archive`` is an ``InrArchive``)
Renderer = Callable[[Any, np.ndarray, int, int], torch.Tensor]


@dataclass(frozen=True)
class ArchiveFamily:
    """What the reader needs to know about the INR files of one model family."""

    #: the model spec an ``architecture`` attribute describes (``InrArchive.spec``)
    spec: Callable[[Mapping[str, Any]], Any]
    #: the stored parameter names in the order the model evaluates them (``InrArchive.param_names``)
    param_order: Callable[[Mapping[str, Any], Sequence[str]], list[str]]
    #: the ``coordinate_convention`` attribute as the family reads it (file path for error messages)
    coordinate_convention: Callable[[Mapping[str, Any], Path], str]
    #: ``InrArchive.render``
    render: Renderer


_FAMILIES: dict[str, ArchiveFamily] = {}
#: built-in families by the module that registers them on import
_BUILTIN = {"siren": "izoo.siren.archive", "nerf": "izoo.nerf.archive"}


def register_archive_family(name: str, family: ArchiveFamily) -> None:
    """Make archives of model family ``name`` readable and renderable through ``InrArchive``."""
    _FAMILIES[name] = family


def archive_family(name: str) -> ArchiveFamily | None:
    """The registered view of family ``name`` (a built-in family's module is imported first), or ``None``."""
    if name not in _FAMILIES and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    return _FAMILIES.get(name)
