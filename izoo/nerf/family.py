"""The ``nerf`` model family for the shard machinery (``izoo.fitting.families``): same rules and CLI as 2D.

Dataset config: ``model: {family: nerf, depth, width, pos_freqs, dir_freqs}``; the ``fit:`` section adds the
rendering keys read by ``RenderSettings`` (``rays_per_batch``, ``samples_per_ray``, ``near``, ``far``,
``object_ray_fraction``, ``eval_views``, ``eval_size``) and ``archived_views`` (how many held-out cameras each
item keeps in ``/extras``; default 4, the OmniObject3D views after the first 96 of 100).
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from izoo.errors import IzooError
from izoo.fitting import engine
from izoo.fitting.families import BatchCheckpoint, BatchFit, register_family
from izoo.fitting.phases import PhaseSettings, fit_config
from izoo.fitting.progress import emit
from izoo.nerf import model
from izoo.nerf.fitting import RenderSettings, fit_scenes
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
        self.fit_cfg = fit_config(fit_cfg)
        self.render = RenderSettings.from_fit_config(self.fit_cfg)
        self.archived_views = int(self.fit_cfg.get("archived_views", DEFAULT_ARCHIVED_VIEWS))
        self.chunk_size: int | None = None   # scenes fitted at once after an out-of-memory halving

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
        return {"test_poses": poses, "test_view_index": views, "focal": focal, "height": height, "width": width,
                "class_name": class_name}

    # ----- fitting
    def fit_batch(self, samples: Sequence[Any], init_params: Mapping[str, np.ndarray] | None, seeds: Sequence[int],
                  settings: PhaseSettings, device: torch.device | str, checkpoint: BatchCheckpoint | None = None,
                  progress: engine.ProgressFn | None = None) -> BatchFit:
        """Fit the samples' scenes together (halving the group on out-of-memory); resumable inside a scene."""
        n = len(samples)
        scenes = [self._scene(s) for s in samples]
        init = init_params if init_params is not None else self.init(seeds)
        names = self.param_names()
        checkpoint = checkpoint or BatchCheckpoint(None)
        saved = checkpoint.load() or {}
        done: dict[str, torch.Tensor] = saved.get("done") or {
            "mask": torch.zeros(n, dtype=torch.bool), "psnr_before": torch.zeros(n), "psnr": torch.zeros(n),
            "iterations": torch.zeros(n, dtype=torch.int64), "seconds": torch.zeros(n, dtype=torch.float64),
            **{f"p{k}": torch.zeros(n, *np.asarray(init[name]).shape[1:]) for k, name in enumerate(names)}}
        if saved.get("chunk_size") is not None:
            self.chunk_size = int(saved["chunk_size"])
        inflight = saved.get("inflight")

        while not bool(done["mask"].all()):
            todo = [i for i in range(n) if not bool(done["mask"][i])]
            positions = todo[: self.chunk_size or len(todo)]
            resume = None
            if inflight is not None and inflight["positions"].tolist() == positions:
                resume = inflight["engine"]
            inflight = None
            sel = np.asarray(positions)

            def save(engine_state: dict[str, Any], _pos: list[int] = positions) -> None:
                checkpoint.save({"chunk_size": self.chunk_size, "done": done,
                                 "inflight": {"positions": torch.as_tensor(_pos), "engine": engine_state}})

            try:
                res = fit_scenes([scenes[i] for i in positions], self.spec, settings, self.render,
                                 init={k: torch.as_tensor(np.asarray(init[k], dtype=np.float32)[sel]) for k in names},
                                 device=device, resume_state=resume, should_stop=checkpoint.should_stop,
                                 on_checkpoint=save if checkpoint.path else None, progress=progress,
                                 ray_keys=[ray_key(samples[i]) for i in positions])
            except Exception as exc:
                if not engine.is_out_of_memory(exc):
                    raise
                if len(positions) <= 1:
                    raise IzooError(f"one scene does not fit in {device} memory ({exc})".splitlines()[0], None,
                                    "lower fit.rays_per_batch / eval_chunk_rays or use a GPU with more memory") from exc
                self.chunk_size = max(1, len(positions) // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                emit(f"warning: out of memory fitting {len(positions)} scenes at once on {device}; "
                     f"halving the batch to {self.chunk_size} scenes and going on")
                continue
            idx = torch.as_tensor(sel)
            done["mask"][idx] = True
            done["psnr_before"][idx] = torch.from_numpy(res.psnr_before)
            done["psnr"][idx] = torch.from_numpy(res.psnr)
            done["iterations"][idx] = torch.from_numpy(res.iterations)
            done["seconds"][idx] = torch.from_numpy(res.seconds).double()
            for k, name in enumerate(names):
                done[f"p{k}"][idx] = res.params[name].float()
            if not bool(done["mask"].all()) and checkpoint.path is not None:
                checkpoint.save({"chunk_size": self.chunk_size, "done": done, "inflight": None})

        psnr = done["psnr"].numpy().astype(np.float32)
        return BatchFit(params={name: done[f"p{k}"].numpy() for k, name in enumerate(names)},
                        psnr_before=done["psnr_before"].numpy().astype(np.float32), psnr=psnr,
                        iterations=done["iterations"].numpy().astype(np.int64),
                        seconds=done["seconds"].numpy().astype(np.float32), passed=psnr >= settings.gate_psnr)

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
