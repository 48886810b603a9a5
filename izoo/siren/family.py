"""The ``siren`` model family for the shard machinery (``izoo.fitting.families``): one SIREN per image.

Dataset config: ``model: {family: siren, depth, width, w0, init}`` (``init: learned`` starts every item from a
meta-learned init file, ``izoo.fitting.learned_init``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from izoo.errors import IzooError
from izoo.fitting import learned_init
from izoo.fitting.batch import BatchCheckpoint, fit_in_streams, same_size_units
from izoo.fitting.families import register_family
from izoo.fitting.phases import PhaseSettings, as_fit_config
from izoo.fitting.stream import FitResult, ProgressFn
from izoo.siren import model as siren
from izoo.siren.engine import SirenBatchFit


class SirenFamily:
    """SIREN images: ``model: {family: siren, depth, width, w0, init}``."""

    name = "siren"

    def __init__(self, model_cfg: Mapping[str, Any], fit_cfg: Mapping[str, Any] | None = None):
        cfg = dict(model_cfg)
        init = str(cfg.get("init", "siren"))
        try:
            # a learned init was meta-learned from the SIREN init; items start from the init file instead
            # sizes a caller leaves out take SirenSpec's defaults (the workflow always passes the schema-filled ones)
            sizes = {k: cast(cfg[k]) for k, cast in (("depth", int), ("width", int), ("w0", float)) if k in cfg}
            self.spec = siren.SirenSpec(**sizes, init="siren" if init == learned_init.LEARNED else init)
        except ValueError as exc:
            raise IzooError(f"bad model config: {exc}", "config.yaml", "fix the dataset's model: section") from exc
        self.fit = as_fit_config(fit_cfg)
        self.learned_init: learned_init.LearnedInit | None = None
        init_file = learned_init.init_file_of(cfg)
        if init_file is not None:
            self.learned_init = learned_init.read_init_file(init_file, self.param_names())
            self.learned_init.check_architecture(self.architecture())

    # ----- description
    def param_names(self) -> list[str]:
        """``layer{i}.weight``, ``layer{i}.bias`` for every layer."""
        return [f"layer{i}.{kind}" for i in range(self.spec.depth) for kind in ("weight", "bias")]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-item shape of every parameter tensor, in file order."""
        return dict(zip(self.param_names(), self.spec.param_shapes()))

    def architecture(self) -> dict[str, Any]:
        """Spec plus the exact layer shapes (SPEC §1: record them in the archive)."""
        return {**self.spec.to_dict(), "family": "siren", "n_params": self.spec.n_params(),
                "layer_shapes": {k: list(v) for k, v in self.param_shapes().items()}}

    def file_attrs(self) -> dict[str, Any]:
        """Normalisation and coordinate convention of the fitted images."""
        return {"normalisation": {"mean": list(siren.IMAGENET_MEAN), "std": list(siren.IMAGENET_STD),
                                  "psnr": "PSNR on de-normalised [0,1] pixels (prediction clamped to [0, 1])"},
                "coordinate_convention": siren.COORDINATE_CONVENTION,
                **({"learned_init": self.learned_init.summary()} if self.learned_init is not None else {})}

    def init(self, seeds: Sequence[int]) -> dict[str, np.ndarray]:
        """SIREN initialisation of every item from its seed, or the learned init for every item."""
        if self.learned_init is not None:
            return self.learned_init.broadcast(len(seeds))
        params = siren.init_params(self.spec, seeds)
        return {k: p.numpy() for k, p in zip(self.param_names(), params)}

    def extras(self, samples: Sequence[Any]) -> dict[str, np.ndarray]:
        """Per-item arrays stored under ``/extras``: ``label_map`` and any ``Sample.extras`` (e.g. ``label_map_coarse``)."""
        per_item = []
        for s in samples:
            arrays = dict(getattr(s, "extras", None) or {})
            if getattr(s, "label_map", None) is not None:
                arrays["label_map"] = s.label_map
            per_item.append(arrays)
        names = set().union(*per_item) if per_item else set()
        out: dict[str, np.ndarray] = {}
        for name in sorted(names):
            if any(name not in arrays for arrays in per_item):
                raise IzooError(f"some items of a batch have extra {name!r} and others do not", None,
                                "check the dataset reader: every item of a dataset needs the same extras")
            values = [np.asarray(a[name].numpy() if isinstance(a[name], torch.Tensor) else a[name]) for a in per_item]
            if len({v.shape for v in values}) > 1:
                raise IzooError(f"extra {name!r} differs in size within one batch", None,
                                "resize label maps to one size per dataset")
            out[name] = np.stack(values).astype(np.uint8) if name.startswith("label_map") else np.stack(values)
        return out

    # ----- fitting
    def fit_batch(self, samples: Sequence[Any], init_params: Mapping[str, np.ndarray] | None, seeds: Sequence[int],
                  settings: PhaseSettings, device: torch.device | str, checkpoint: BatchCheckpoint | None = None,
                  progress: ProgressFn | None = None, slots: int | None = None,
                  on_group: Callable[[FitResult], None] | None = None) -> FitResult | None:
        """Fit the samples' images, one stream per image size, ``slots`` at a time; resumable."""
        images = [self._image(s) for s in samples]
        init = init_params if init_params is not None else self.init(seeds)
        # items starting from a Meta-SGD init take its learned-lr steps first (phases that start from fitted
        # weights, refinement, do not)
        warm = self.learned_init.warm_start() if init_params is None and self.learned_init is not None else None
        names = self.param_names()
        flat_init = [torch.from_numpy(np.asarray(init[k], dtype=np.float32)) for k in names]
        use_compile = self.fit.compile

        def make_fitter(positions: list[int]) -> SirenBatchFit:
            sel = torch.as_tensor(positions)
            return SirenBatchFit(self.spec, torch.stack([images[i] for i in positions]), settings,
                                        [p[sel] for p in flat_init], device=device, use_compile=use_compile,
                                        slots=slots, warm=warm)

        return fit_in_streams(same_size_units([tuple(im.shape) for im in images]), make_fitter, names,
                              lambda params: [p.numpy() for p in params], settings, checkpoint, progress, on_group)

    def _image(self, sample: Any) -> torch.Tensor:
        image = getattr(sample, "image", None)
        if image is None:
            raise IzooError(f"item {getattr(sample, 'item_id', '?')} has no image", None,
                            "SIREN datasets need 2D images; use family nerf for scenes")
        image = torch.as_tensor(image, dtype=torch.float32)
        if image.dim() != 3 or image.shape[0] != self.spec.out_features:
            raise IzooError(f"item {getattr(sample, 'item_id', '?')} image has shape {tuple(image.shape)}, "
                            f"expected [{self.spec.out_features}, H, W]", None, "check the dataset reader")
        return image


register_family("siren", SirenFamily)
