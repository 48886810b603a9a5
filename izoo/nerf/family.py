"""The ``nerf`` model family for the shard machinery (``izoo.fitting.families``): same rules and CLI as 2D.

Dataset config: ``model: {family: nerf, depth, width, pos_freqs, dir_freqs}``; the ``fit:`` section adds the
rendering keys read by ``RenderSettings`` (``rays_per_batch``, ``samples_per_ray``, ``near``, ``far``,
``object_ray_fraction``, ``eval_views``, ``eval_size``) and ``archived_views`` (how many held-out cameras each
item keeps in ``/extras``; default 4, the OmniObject3D views after the first 96 of 100).
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from izoo.errors import IzooError
from izoo.fitting.batch import BatchCheckpoint, fit_in_streams, same_size_units
from izoo.fitting.families import register_family
from izoo.fitting.phases import PhaseSettings, as_fit_config
from izoo.fitting.stream import FitResult, ProgressFn
from izoo.nerf import model
from izoo.nerf.archive import CAMERA_EXTRAS
from izoo.nerf.fitting import NerfBatchFit, RenderSettings
from izoo.nerf.model import CAMERA_CONVENTION, NerfSpec

DEFAULT_ARCHIVED_VIEWS = 4
CLASS_NAME_BYTES = 64


class NerfFamily:
    """NeRF scenes: ``model: {family: nerf, depth: 4, width: 128, pos_freqs: 10, dir_freqs: 4}``."""

    name = "nerf"

    def __init__(self, model_cfg: Mapping[str, Any], fit_cfg: Mapping[str, Any] | None = None):
        cfg = dict(model_cfg)
        try:
            self.spec = NerfSpec.from_dict(cfg)
        except ValueError as exc:
            raise IzooError(f"bad model config: {exc}", "config.yaml", "fix the dataset's model: section") from exc
        self.fit_cfg = as_fit_config(fit_cfg).to_dict()
        self.render = RenderSettings.from_fit_config(self.fit_cfg)
        self.archived_views = int(self.fit_cfg.get("archived_views", DEFAULT_ARCHIVED_VIEWS))

    # ----- description
    def param_names(self) -> list[str]:
        """Trunk ``layer{i}.*`` then the ``sigma``, ``feature``, ``view0``, ``rgb`` heads (weight, bias each)."""
        return self.spec.param_names()

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-scene shape of every parameter tensor, in file order."""
        return self.spec.param_shapes()

    def architecture(self) -> dict[str, Any]:
        """Spec, encodings, activations and exact layer shapes."""
        return self.spec.to_dict()

    def file_attrs(self) -> dict[str, Any]:
        """Rendering settings, camera convention and how PSNR was measured."""
        r = self.render
        return {"normalisation": {"rgb": "[0, 1], no normalisation (sigmoid head)",
                                  "psnr": "mean over held-out views of each view's PSNR on [0, 1] pixels, "
                                          f"{'all' if r.eval_views is None else r.eval_views} held-out views"
                                          f"{'' if r.eval_size is None else f' at width {r.eval_size}'}"},
                "coordinate_convention": CAMERA_CONVENTION,
                "rendering": {"near": r.near, "far": r.far, "samples_per_ray": r.samples_per_ray,
                              "sampling": "stratified", "white_background": True, "hierarchical": False},
                "lr_schedule": "exponential decay lr * (lr_min / lr) ** (step / schedule_steps)"}

    def init(self, seeds: Sequence[int]) -> dict[str, np.ndarray]:
        """``nn.Linear``-style initialisation of every scene from its seed."""
        return {k: v.numpy() for k, v in model.init_params(self.spec, seeds).items()}

    def extras(self, samples: Sequence[Any]) -> dict[str, np.ndarray]:
        """Held-out cameras (poses ``[n, K, 4, 4]`` NaN-padded, view index ``[n, K]`` −1-padded, focal, H, W) + class name."""
        k = self.archived_views
        n = len(samples)
        poses = np.full((n, k, 4, 4), np.nan, dtype=np.float32)
        views = np.full((n, k), -1, dtype=np.int64)
        focal = np.zeros(n, dtype=np.float32)
        height = np.zeros(n, dtype=np.int64)
        width = np.zeros(n, dtype=np.int64)
        class_name = np.zeros(n, dtype=f"S{CLASS_NAME_BYTES}")
        for i, sample in enumerate(samples):
            scene = self._scene(sample)
            held = list(scene.test_views)[:k]
            poses[i, :len(held)] = torch.as_tensor(scene.poses)[held].numpy()
            views[i, :len(held)] = held
            focal[i], height[i], width[i] = float(scene.focal), int(scene.height), int(scene.width)
            class_name[i] = str(getattr(scene, "class_name", "")).encode()[:CLASS_NAME_BYTES]
        values = {"poses": poses, "view_index": views, "focal": focal, "height": height, "width": width,
                  "class_name": class_name}
        return {CAMERA_EXTRAS[key]: value for key, value in values.items()}

    # ----- fitting
    def fit_batch(self, samples: Sequence[Any], init_params: Mapping[str, np.ndarray] | None, seeds: Sequence[int],
                  settings: PhaseSettings, device: torch.device | str, checkpoint: BatchCheckpoint | None = None,
                  progress: ProgressFn | None = None, slots: int | None = None,
                  on_group: Callable[[FitResult], None] | None = None) -> FitResult | None:
        """Fit the samples' scenes, one stream per image size, ``slots`` at a time; resumable inside a scene."""
        scenes = [self._scene(s) for s in samples]
        init = init_params if init_params is not None else self.init(seeds)
        names = self.param_names()
        flat_init = {k: torch.as_tensor(np.asarray(init[k], dtype=np.float32)) for k in names}
        keys = [ray_key(s) for s in samples]

        def make_fitter(positions: list[int]) -> NerfBatchFit:
            sel = torch.as_tensor(positions)
            return NerfBatchFit(self.spec, [scenes[i] for i in positions], settings, self.render,
                                {k: v[sel] for k, v in flat_init.items()}, device=device,
                                ray_keys=[keys[i] for i in positions], slots=slots)

        units = same_size_units([(int(s.height), int(s.width)) for s in scenes])
        return fit_in_streams(units, make_fitter, names, lambda params: [params[k].numpy() for k in names],
                              settings, checkpoint, progress, on_group)

    @staticmethod
    def _scene(sample: Any) -> Any:
        scene = getattr(sample, "scene", None)
        if scene is None:
            raise IzooError(f"item {getattr(sample, 'item_id', '?')} has no scene", None,
                            "NeRF datasets need multi-view scenes (source.format: scenes); use family siren for images")
        return scene


def ray_key(sample: Any) -> int:
    """A scene's random-draw key: CRC-32 of its item id (stable across runs, batches and machines)."""
    return zlib.crc32(str(getattr(sample, "item_id", "")).encode())


register_family("nerf", NerfFamily)
