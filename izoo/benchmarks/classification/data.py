"""One archive split for classification: its labelled items' SIREN weights in batches (on the device when small)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

import izoo.archive
from izoo.errors import IzooError
from izoo.siren import model as siren

log = logging.getLogger(__name__)


class InrSplit:
    """One archive split for training: labels, SIREN spec, and parameter batches (on the device when small)."""

    def __init__(self, path: str | Path, device: torch.device, max_items: int | None, in_memory_gb: float,
                 loader_workers: int = 0):
        self.path = Path(path)
        self.device = device
        archive = izoo.archive.open(self.path, device="cpu")
        if archive.spec is None:
            raise IzooError(f"classification needs SIREN INRs, not {archive.model_family!r}", self.path,
                            "pass a 2D image archive (e.g. results/cifar10/archive/train.h5)")
        self.spec = archive.spec
        self.convention = archive.coordinate_convention
        self.loader_workers = int(loader_workers)
        if len(archive) == 0:
            raise IzooError("archive has no items", self.path, "rerun the merge that writes it")
        all_labels = np.asarray(archive.labels)
        # items without a class (label -1, e.g. the ImageNet test images) are archived but cannot be classified
        self.rows = np.flatnonzero(all_labels >= 0)
        self.unlabelled = int(len(all_labels) - len(self.rows))
        if max_items is not None:
            self.rows = self.rows[: int(max_items)]
        self.n = len(self.rows)
        if self.n == 0:
            raise IzooError(f"archive has no labelled items ({self.unlabelled} items carry label -1)", self.path,
                            "classification needs a labelled split (train/val, not the unlabelled test split)")
        if self.unlabelled:
            log.info("%s: %d items without a class label (-1) left out", self.path, self.unlabelled)
        self.labels = torch.as_tensor(all_labels[self.rows], dtype=torch.long)
        self.in_memory = 4 * self.spec.n_params() * self.n <= in_memory_gb * (1 << 30)
        self._archive = None
        self.params: siren.Params | None = None
        if self.in_memory:  # demo/CIFAR scale: hold every weight on the device, batches are plain indexing
            contiguous = self.rows[-1] + 1 == self.n  # the common case: rows 0..n-1, one slice read
            self.params = [p.to(device) for p in archive.params_batch(slice(0, self.n) if contiguous
                                                                      else self.rows.tolist())]
            archive.close()
        else:               # ImageNet scale: stream contiguous runs through the archive's DataLoader
            self._archive = archive
        self.labels = self.labels.to(device)

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                seed: int = 0) -> Iterator[tuple[siren.Params, torch.Tensor]]:
        """``(params, labels)`` batches on the device; shuffled each call when asked."""
        if self.params is not None:
            order = torch.randperm(self.n, generator=generator) if shuffle else torch.arange(self.n)
            order = order.to(self.device)
            for start in range(0, self.n, batch_size):
                rows = order[start:start + batch_size]
                yield [p[rows] for p in self.params], self.labels[rows]
            return
        loader = self._archive.dataloader(batch_size=batch_size, shuffle=shuffle, seed=seed,
                                          indices=self.rows, with_extras=False,
                                          num_workers=self.loader_workers, pin_memory=self.device.type == "cuda")
        for batch in loader:
            yield [p.to(self.device, non_blocking=True) for p in batch["params"]], batch["label"].to(self.device)
