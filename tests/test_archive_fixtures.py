"""Tiny fitted INR files for the archive tests: 8 images of 8x8, fitted for real with plain autograd.

Layout of the toy dataset: train = manifest indices 0..5 in shards train-00000 (0, 1, 2) and train-00001
(3, 4, 5); test = 6, 7 in test-00000. Refinement: extended job-0000 refits train 4 and test 6 (a job packing
items across splits), until_threshold job-0000 refits train 4 again, so item 4 must come from until_threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from izoo.archive import layout
from izoo.metrics import psnr
from izoo.siren import model as siren

SPEC = siren.SirenSpec(depth=3, width=16, w0=30.0)
SIZE = 8
GATE = 30.0
SHARDS = {"train-00000": [0, 1, 2], "train-00001": [3, 4, 5], "test-00000": [6, 7]}


def toy_images(n: int = 8) -> torch.Tensor:
    """Smooth deterministic colour images ``[n, 3, 8, 8]`` in [0, 1]."""
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, 3, 3, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=True)


def fit(images: torch.Tensor, steps: int, init: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Fit one SIREN per image with Adam; returns the params and the PSNR of their render."""
    params = [p.clone() for p in init] if init is not None else siren.init_params(SPEC, [42] * len(images))
    params = [p.requires_grad_(True) for p in params]
    target = siren.normalise(images).flatten(2).transpose(1, 2)  # [B, P, 3]
    coords = siren.coordinate_grid(SIZE, SIZE)
    opt = torch.optim.Adam(params, lr=5e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = (siren.forward(params, coords, SPEC.w0) - target).pow(2).mean()
        loss.backward()
        opt.step()
    params = [p.detach() for p in params]
    return params, psnr(siren.render(params, SPEC, SIZE, SIZE), images)


@dataclass
class ToyData:
    """Paths and reference values of the toy dataset."""

    root: Path
    manifest: Path
    images: torch.Tensor
    basic: dict[str, Path]
    extended: Path
    until: Path
    expected_psnr: dict[int, float]
    expected_phase: dict[int, str]
    expected_params: dict[int, list[torch.Tensor]]


def manifest_table() -> pd.DataFrame:
    """The toy manifest."""
    rows = []
    for shard, indices in SHARDS.items():
        for i in indices:
            rows.append({"index": i, "split": shard.split("-")[0], "item_id": f"img{i:03d}", "label": i % 3,
                         "source_id": f"toy/img{i:03d}.png", "shard": shard})
    return pd.DataFrame(rows)


def _write(path: Path, indices: list[int], params: list[torch.Tensor], psnrs: torch.Tensor, phase: str,
           iterations: list[int], table: pd.DataFrame) -> None:
    rows = table.set_index("index").loc[indices]
    items = pd.DataFrame({
        "index": indices, "item_id": rows["item_id"].to_numpy(), "source_id": rows["source_id"].to_numpy(),
        "split": rows["split"].to_numpy(), "label": rows["label"].to_numpy(), "psnr": psnrs.numpy(),
        "phase": [phase] * len(indices), "iterations": iterations, "seconds": [0.01] * len(indices),
        "passed": (psnrs >= GATE).numpy(),
    })
    names = [f"layer{k // 2}.{'weight' if k % 2 == 0 else 'bias'}" for k in range(len(params))]
    label_maps = np.stack([np.full((SIZE, SIZE), i % 3, dtype=np.uint8) for i in indices])
    attrs = layout.base_attrs("siren", SPEC.to_dict(), gate_psnr=GATE, dataset="toy", phase=phase,
                              normalisation={"mean": list(siren.IMAGENET_MEAN), "std": list(siren.IMAGENET_STD)},
                              fitting={"lr": 1e-3, "phase": phase}, image_size=[SIZE, SIZE])
    layout.write_inr_file(path, {n: p.numpy() for n, p in zip(names, params)}, items, attrs,
                          extras={"label_map": label_maps})


def build_toy(root: Path, basic_steps: int = 40) -> ToyData:
    """Fit and write the toy dataset's basic shards and refinement jobs under ``root``."""
    table = manifest_table()
    manifest = root / "manifest.csv"
    root.mkdir(parents=True, exist_ok=True)
    table.to_csv(manifest, index=False)
    images = toy_images()
    torch.manual_seed(0)
    expected_psnr: dict[int, float] = {}
    expected_phase: dict[int, str] = {}
    expected_params: dict[int, list[torch.Tensor]] = {}
    basic_params: dict[int, list[torch.Tensor]] = {}
    paths = {}
    for shard, indices in SHARDS.items():
        params, psnrs = fit(images[indices], basic_steps)
        paths[shard] = root / "fit" / "basic" / f"{shard}.h5"
        _write(paths[shard], indices, params, psnrs, "basic", [basic_steps] * len(indices), table)
        for k, i in enumerate(indices):
            basic_params[i] = [p[k] for p in params]
            expected_psnr[i], expected_phase[i] = float(psnrs[k]), "basic"
            expected_params[i] = basic_params[i]

    def refine(indices: list[int], start: dict[int, list[torch.Tensor]], steps: int, phase: str,
               before: int, path: Path) -> dict[int, list[torch.Tensor]]:
        init = [torch.stack([start[i][k] for i in indices]) for k in range(2 * SPEC.depth)]
        params, psnrs = fit(images[indices], steps, init)
        _write(path, indices, params, psnrs, phase, [before + steps] * len(indices), table)
        out = {}
        for k, i in enumerate(indices):
            out[i] = [p[k] for p in params]
            expected_psnr[i], expected_phase[i], expected_params[i] = float(psnrs[k]), phase, out[i]
        return out

    extended = root / "fit" / "extended" / "job-0000.h5"
    until = root / "fit" / "until_threshold" / "job-0000.h5"
    ext = refine([6, 4], basic_params, basic_steps, "extended", basic_steps, extended)
    refine([4], ext, basic_steps, "until_threshold", 2 * basic_steps, until)
    return ToyData(root, manifest, images, paths, extended, until, expected_psnr, expected_phase, expected_params)


def merge_args(toy: ToyData, split: str, out: Path) -> dict:
    """Keyword arguments of ``merge_split`` for one split of the toy dataset (basic shards given out of order)."""
    shards = sorted((p for s, p in toy.basic.items() if s.startswith(split)), reverse=True)
    return {"manifest": toy.manifest, "split": split, "shards": shards, "refined": [toy.extended, toy.until],
            "out": out, "dataset": "toy"}
