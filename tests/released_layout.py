"""Test helpers: an independent re-implementation of the released Implicit-Zoo SIREN (``INR``, ``make_coordinates``)
and writers of a tiny released-layout tree and a tiny CIFAR-10 python-version folder.

Written from the released code's documented behaviour, not shared with izoo, so the import tests compare izoo
against a second implementation.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


class ReleasedSine(nn.Module):
    """``sin(w0 * (x W^T + b))`` with parameters named ``weight``/``bias`` (the released ``Siren`` layer)."""

    def __init__(self, dim_in: int, dim_out: int, w0: float = 30.0):
        super().__init__()
        bound = math.sqrt(6.0 / dim_in) / w0
        self.weight = nn.Parameter(torch.empty(dim_out, dim_in).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(dim_out))
        self.w0 = w0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * F.linear(x, self.weight, self.bias))


class ReleasedINR(nn.Module):
    """The released ``INR``: ``n_layers - 1`` sine layers then ``nn.Linear`` to 3 channels, held in ``self.seq``."""

    def __init__(self, n_layers: int = 3, hidden: int = 16):
        super().__init__()
        layers: list[nn.Module] = [ReleasedSine(2, hidden)]
        layers += [ReleasedSine(hidden, hidden) for _ in range(n_layers - 2)]
        layers.append(nn.Linear(hidden, 3))
        self.seq = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


def make_coordinates(height: int, width: int) -> torch.Tensor:
    """The released grid: ``np.linspace(-1, 1, N)`` per axis, ``np.meshgrid(x, y)``, column coordinate first."""
    ys = np.linspace(-1, 1, height)
    xs = np.linspace(-1, 1, width)
    grid_x, grid_y = np.meshgrid(xs, ys)
    return torch.from_numpy(np.stack([grid_x.flatten(), grid_y.flatten()]).T).float()


def released_image(model: ReleasedINR, height: int, width: int) -> torch.Tensor:
    """``predict_entire_image``: raw (ImageNet-normalised) ``[3, H, W]``."""
    with torch.no_grad():
        return model(make_coordinates(height, width)).view(height, width, 3).permute(2, 0, 1)


def to_pixels(raw: torch.Tensor) -> torch.Tensor:
    """The released ``inv_normalize`` then clamp to [0, 1]."""
    return (raw * STD.view(3, 1, 1) + MEAN.view(3, 1, 1)).clamp(0, 1)


def random_inr(seed: int, n_layers: int = 3, hidden: int = 16) -> ReleasedINR:
    """A released-style INR with non-zero biases (so bias handling is exercised)."""
    torch.manual_seed(seed)
    model = ReleasedINR(n_layers, hidden)
    with torch.no_grad():
        for layer in model.seq:
            layer.bias.uniform_(-0.5, 0.5)
    return model


def write_run(run: Path, start: int, labels: list[int], seed: int = 42, n_layers: int = 3,
              hidden: int = 16) -> dict[int, ReleasedINR]:
    """A generator run folder: ``ckpts/{label:02d}/{idx:06d}_{seed:07d}.ckpt`` + ``{start}_{end}.json``."""
    models, psnrs = {}, {}
    for image_idx, label in enumerate(labels):
        model = random_inr(1000 * start + image_idx, n_layers, hidden)
        folder = run / "ckpts" / f"{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"image_idx": image_idx, "params": model.state_dict()},
                   folder / f"{image_idx:06d}_{seed:07d}.ckpt")
        psnrs[str(image_idx)] = 20.0 + image_idx / 4
        models[start + image_idx] = model
    (run / f"{start}_{start + len(labels)}.json").write_text(json.dumps(psnrs))
    return models


def write_cifar(root: Path, train_labels: list[int], test_labels: list[int], seed: int = 0,
                train_images: np.ndarray | None = None) -> Path:
    """A CIFAR-10 python-version folder (5 train batches, one test batch) of ``train_images`` (uint8 ``[N, 3, 32, 32]``)
    or random 32x32 images."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    parts = np.array_split(np.arange(len(train_labels)), 5)
    batches = [(f"data_batch_{k + 1}", [train_labels[i] for i in part]) for k, part in enumerate(parts)]
    batches.append(("test_batch", list(test_labels)))
    offset = 0
    for name, labels in batches:
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        if train_images is not None and name != "test_batch":
            data = np.ascontiguousarray(train_images[offset:offset + len(labels)].reshape(len(labels), 3072))
            offset += len(labels)
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh, protocol=2)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"class{k}".encode() for k in range(10)]}, fh, protocol=2)
    return root
