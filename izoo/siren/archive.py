"""SIREN archives for ``izoo.archive``: spec, layer order and coordinate convention from the attributes, and
rendering on any pixel grid (registered as the ``siren`` ``ArchiveFamily``)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

import izoo.archive.layout as layout
from izoo.archive.checks import coordinate_convention_of, spec_from_attrs
from izoo.archive.families import ArchiveFamily, register_archive_family
from izoo.siren import model as siren


def layer_order(attrs: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """``layer0.weight``, ``layer0.bias``, ``layer1.weight``, ... (``layer10`` after ``layer9``)."""
    return sorted(names, key=layout.param_sort_key)


def render(archive: Any, rows: np.ndarray, height: int, width: int) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1]: the batched SIREN on the archive's pixel grid."""
    return siren.render(archive.params_batch(rows), archive.spec, height, width,
                        convention=archive.coordinate_convention)


register_archive_family("siren", ArchiveFamily(spec=spec_from_attrs, param_order=layer_order,
                                               coordinate_convention=coordinate_convention_of, render=render))
