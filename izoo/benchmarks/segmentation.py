"""Cityscapes-INR semantic segmentation: SegFormer-B0-size model over INR queries (the paper's Table 3).

Model = tokenizer → hierarchical encoder → all-MLP decoder:

* the tokenizer is ``izoo.benchmarks.tokenizers.CoordinateTokenizer`` (uniform, LC or LP+reg) with patch 4, the
  stride of the encoder's first stage: it queries the SIRENs at its (learnable) coordinates and lays the values out
  as a ``[B, 3, H, W]`` image whose 4×4 blocks are its tokens' pixel groups, so the encoder runs unchanged;
* the encoder is timm's ``pvt_v2_b0`` (same family as SegFormer's MiT-B0: overlapping patch embedding,
  spatial-reduction attention, Mix-FFN), ``features_only`` → 4 stages at strides 4/8/16/32, optionally initialised
  from a local checkpoint file, ``encoder_checkpoint`` (the paper fine-tunes an ImageNet-1K-pretrained MiT-B0;
  nothing is downloaded; without the file the encoder trains from scratch);
* the decoder is SegFormer's all-MLP head, written here because timm ships encoders only (no decode heads).

Training (SPEC §4): AdamW, lr 1e-4 (tokenizer 1e-5), polynomial decay with power 1, 40k steps, batch 16, cross
entropy with ignore label 255 (+ the non-close penalty for LP+reg), random horizontal flips done in weight space
(negating the x column of the first layer mirrors the INR exactly) and random resize-and-crop (zoom 1–2×, also
exact in weight space, SegFormer's recipe without its zoom-out). mIoU over the 19 train ids on fine labels
(``label_map``) and on coarse labels when the archive has ``label_map_coarse``. The paper does not say how its
coarse column was obtained; izoo evaluates the same model on the test split's coarse annotations (the
``train_extra`` split, coarse labels only, is fitted and archived as in the paper's 23,473-item dataset). Every
result also carries a ``reference``: the mIoU of predicting the train split's most frequent class everywhere.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from izoo.archive.reader import InrArchive, open_archive
from izoo.atomic import atomic_path
from izoo.benchmarks.seg_metrics import (CITYSCAPES_CLASSES, IGNORE_INDEX, confusion_matrix, iou_per_class,
                                         mean_iou, pixel_accuracy)
from izoo.benchmarks.tables import seed_references
from izoo.benchmarks.tokenizers import CoordinateTokenizer, DISPLAY_NAMES, describe
from izoo.errors import IzooError
from izoo.jsonargs import settings_from_json
from izoo.siren import model as siren

log = logging.getLogger(__name__)

#: tokenizers of the paper's Table 3, in its row order
SEG_TOKENIZERS = ("uniform", "lc", "lp_reg")
#: label-map extras evaluated, with the name of their mIoU column
LABEL_EXTRAS = {"label_map": "fine", "label_map_coarse": "coarse"}


@dataclass
class SegSettings:
    """Segmentation benchmark settings; defaults are the paper's (SPEC §4)."""

    height: int = 320
    width: int = 640
    patch: int = 4  # tokenizer group size = stride of the encoder's first stage
    num_classes: int = 19
    steps: int = 40_000
    batch_size: int = 16
    lr: float = 1e-4
    tokenizer_lr: float = 1e-5
    weight_decay: float = 0.01
    poly_power: float = 1.0
    reg_weight: float = 1.0
    hflip: bool = True
    zoom_range: tuple = (1.0, 2.0)  # random resize ratio + crop (SegFormer's recipe, zoom-in only; (1, 1) = off)
    encoder: str = "pvt_v2_b0"
    encoder_kwargs: dict = field(default_factory=dict)  # e.g. smaller depths/embed_dims for tests
    decoder_dim: int = 256
    dropout: float = 0.1
    encoder_checkpoint: str | None = None  # local timm state dict of the encoder (ImageNet-pretrained MiT-B0)
    eval_batch_size: int = 8
    in_memory: bool = False
    loader_workers: int = 0  # DataLoader worker processes reading the archives (0: in-process)
    log_every: int = 50
    device: str = "auto"

    @classmethod
    def from_json(cls, text_or_path: str | None) -> "SegSettings":
        """Settings from a JSON string or file (unknown keys are an error naming them)."""
        return settings_from_json(cls, text_or_path, "segmentation")


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SegFormerHead(nn.Module):
    """SegFormer's all-MLP decoder (Xie et al. 2021), hand-written because timm has encoders but no decode heads.

    Each stage is projected to ``dim`` channels by a linear layer, upsampled to stride 4, concatenated
    (deepest first, as the original code), fused by a 1×1 conv + BN + ReLU, and classified by a 1×1 conv.
    """

    def __init__(self, in_channels: Sequence[int], dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(c, dim) for c in in_channels)
        self.fuse = nn.Sequential(nn.Conv2d(dim * len(in_channels), dim, 1, bias=False), nn.BatchNorm2d(dim),
                                  nn.ReLU(inplace=True))
        self.dropout = nn.Dropout2d(dropout)
        self.classify = nn.Conv2d(dim, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stage features ``[B, C_i, H_i, W_i]`` (stride 4 first) → logits ``[B, classes, H_0, W_0]``."""
        size = features[0].shape[-2:]
        projected = []
        for feat, proj in zip(features, self.proj):
            x = proj(feat.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(feat.shape[0], -1, *feat.shape[-2:])
            projected.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False) if x.shape[-2:] != size
                             else x)
        fused = self.fuse(torch.cat(projected[::-1], dim=1))
        return self.classify(self.dropout(fused))


def build_encoder(settings: SegSettings) -> nn.Module:
    """timm encoder (``features_only``), from ``encoder_checkpoint`` when given (a local file; never downloads)."""
    ckpt = settings.encoder_checkpoint
    kwargs: dict[str, Any] = dict(features_only=True, **settings.encoder_kwargs)
    if ckpt:
        if not Path(ckpt).is_file():
            raise IzooError("pretrained encoder checkpoint is missing", ckpt,
                            "point encoder_checkpoint at a local timm/pvt_v2_b0 state-dict file (or drop it)")
        # timm loads local files through pretrained_cfg_overlay and applies its own key filters (classifier dropped)
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(ckpt)})
    else:
        kwargs.update(pretrained=False)
    try:
        return timm.create_model(settings.encoder, **kwargs)
    except RuntimeError as exc:
        if ckpt:
            raise IzooError(f"checkpoint does not fit {settings.encoder} ({str(exc).splitlines()[0]})", ckpt,
                            f"give a state dict of timm's {settings.encoder}") from exc
        raise


class InrSegmenter(nn.Module):
    """Tokenizer + timm hierarchical encoder + SegFormer all-MLP head, over batches of SIREN parameters."""

    def __init__(self, settings: SegSettings, tokenizer: str, seed: int = 0, convention: str = siren.PIXEL_CENTERS):
        super().__init__()
        self.tokenizer = CoordinateTokenizer(tokenizer, settings.height, settings.width, settings.patch, seed=seed,
                                             convention=convention)
        self.encoder = build_encoder(settings)
        self.decoder = SegFormerHead(self.encoder.feature_info.channels(), settings.decoder_dim,
                                     settings.num_classes, settings.dropout)

    def network(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder + decoder on tokenizer output ``[B, 3, H, W]`` → logits at stride 4."""
        return self.decoder(self.encoder(images))

    def forward(self, params: siren.Params, w0: float) -> torch.Tensor:
        """Logits ``[B, classes, H/4, W/4]`` of B SIRENs."""
        if self.tokenizer.learnable:
            images = self.tokenizer(params, w0)
        else:
            with torch.no_grad():  # fixed coordinates: the query needs no graph
                images = self.tokenizer(params, w0)
        return self.network(images)

    def parameter_groups(self, settings: SegSettings) -> list[dict]:
        """AdamW groups: the network at ``lr``, the tokenizer's coordinates at ``tokenizer_lr``."""
        groups = [{"params": [p for p in list(self.encoder.parameters()) + list(self.decoder.parameters())],
                   "lr": settings.lr, "name": "network"}]
        tok = [p for p in self.tokenizer.parameters() if p.requires_grad]
        if tok:
            groups.append({"params": tok, "lr": settings.tokenizer_lr, "name": "tokenizer"})
        return groups


def hflip_params(params: siren.Params, flip: torch.Tensor) -> siren.Params:
    """Mirror the INRs where ``flip`` ``[B]`` is true: negate the x column of the first layer's weight (exact)."""
    w = params[0].clone()
    w[flip, :, 0] = -w[flip, :, 0]
    return [w] + list(params[1:])


def zoom_crop(params: siren.Params, labels: torch.Tensor, ratio: torch.Tensor, offset: torch.Tensor,
              convention: str = siren.PIXEL_CENTERS) -> tuple[siren.Params, torch.Tensor]:
    """Resize by ``ratio`` ``[B]`` (≥ 1) and crop at ``offset`` ``[B, 2]``, exactly, in weight space.

    The crop shows original coordinates ``x / r + t``; since ``W (x / r + t) + b = (W / r) x + (b + W t)`` the first
    layer becomes ``(W / r, b + W t)``. Label maps are resampled at the same coordinates (nearest neighbour, on the
    INRs' ``convention`` grid as ``siren.coordinate_grid``). Zoom-out (r < 1) is not offered: it would query the INR
    outside the (-1, 1) square it was fitted on.
    """
    w, b = params[0], params[1]
    new_w = w / ratio[:, None, None]
    new_b = b + torch.einsum("boi,bi->bo", w, offset)
    height, width = labels.shape[-2:]
    grid = siren.coordinate_grid(height, width, device=labels.device, convention=convention)
    grid = grid.reshape(1, height, width, 2) / ratio[:, None, None, None] + offset[:, None, None, :]
    # grid_sample's align_corners=True puts ±1 on the border pixels' centres: the linspace grid
    resampled = F.grid_sample(labels[:, None].float(), grid, mode="nearest",
                              align_corners=convention == siren.LINSPACE_ENDPOINTS)
    return [new_w, new_b] + list(params[2:]), resampled[:, 0].round().long()


def count_params(module: nn.Module) -> int:
    """Trainable parameters (learnable tokenizer coordinates included)."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def count_gflops(model: InrSegmenter, params_one: siren.Params, w0: float) -> dict[str, float]:
    """GFLOPs of one forward pass at the settings' size: network alone and with the tokenizer's INR query.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls/convs, 2 FLOPs per multiply-add). The
    paper's GFLOPs column counts the INR query only for learnable tokenizers (the uniform image can be rendered
    once, without gradient); both numbers are kept so either convention can be tabulated.
    """
    # counted on the meta device: shapes only, so paper-size inputs cost no compute and no memory
    meta = copy.deepcopy(model).to("meta").eval()
    params_meta = [p.detach().to("meta") for p in params_one]
    with torch.no_grad():
        with FlopCounterMode(display=False) as query_counter:
            images = meta.tokenizer(params_meta, w0)
        with FlopCounterMode(display=False) as net_counter:
            meta.network(images)
    network = net_counter.get_total_flops() / 1e9
    query = query_counter.get_total_flops() / 1e9
    return {"gflops_network": network, "gflops_with_query": network + query, "gflops_inr_query": query,
            "gflops_paper_convention": network + (query if model.tokenizer.learnable else 0.0)}


def _check_archive(arch: InrArchive, role: str) -> None:
    if arch.spec is None:
        raise IzooError(f"{role} archive holds {arch.model_family} INRs, not SIRENs", arch.path,
                        "pass the Cityscapes SIREN archive (results/cityscapes/archive/<split>.h5)")
    if "label_map" not in arch.extra_names:
        raise IzooError(f"{role} archive has no label_map extra (extras: {arch.extra_names})", arch.path,
                        "build it from a segmentation dataset (cityscapes format), whose items carry label maps")


def _labels(batch: Mapping[str, Any], name: str, device: torch.device) -> torch.Tensor:
    return batch[name].to(device=device, dtype=torch.long)


def _cycle(arch: InrArchive, batch_size: int, seed: int, workers: int = 0, pin_memory: bool = False):
    """Endless shuffled batches (a new permutation every pass); drops a ragged last batch when the set allows."""
    drop_last = len(arch) >= batch_size
    loader = arch.dataloader(batch_size=batch_size, shuffle=True, drop_last=drop_last, seed=seed,
                             num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0)
    while True:
        for batch in loader:
            yield batch


def evaluate(model: InrSegmenter, arch: InrArchive, settings: SegSettings, w0: float) -> dict[str, Any]:
    """Confusion-matrix metrics on every label-map extra of ``arch`` (fine, and coarse when present)."""
    device = next(model.parameters()).device
    names = [n for n in LABEL_EXTRAS if n in arch.extra_names]
    confusions = {n: torch.zeros(settings.num_classes, settings.num_classes, dtype=torch.long) for n in names}
    model.eval()
    with torch.no_grad():
        for batch in arch.dataloader(batch_size=settings.eval_batch_size, shuffle=False,
                                     num_workers=settings.loader_workers, pin_memory=device.type == "cuda"):
            params = [p.to(device) for p in batch["params"]]
            logits = model(params, w0)
            for name in names:
                target = _labels(batch, name, device)
                up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
                confusions[name] += confusion_matrix(up.argmax(1), target, settings.num_classes)
    model.train()
    out: dict[str, Any] = {}
    class_names = CITYSCAPES_CLASSES if settings.num_classes == len(CITYSCAPES_CLASSES) else \
        tuple(str(c) for c in range(settings.num_classes))
    for name in names:
        tag = LABEL_EXTRAS[name]
        out[f"miou_{tag}"] = mean_iou(confusions[name])
        out[f"pixel_acc_{tag}"] = pixel_accuracy(confusions[name])
        out[f"iou_{tag}"] = {c: (None if math.isnan(v) else v)
                             for c, v in zip(class_names, iou_per_class(confusions[name]).tolist())}
    return out


def class_histogram(arch: InrArchive, name: str, num_classes: int, chunk: int = 256) -> torch.Tensor:
    """Pixels per class ``[C]`` over every label map ``name`` of ``arch`` (ignore pixels left out)."""
    hist = torch.zeros(num_classes, dtype=torch.long)
    for start in range(0, len(arch), chunk):
        maps = torch.from_numpy(np.asarray(arch.extras(name, slice(start, min(len(arch), start + chunk))))).long()
        maps = maps[maps < num_classes]
        hist += torch.bincount(maps.reshape(-1), minlength=num_classes)
    return hist


def majority_reference(train: InrArchive, test: InrArchive, settings: SegSettings) -> dict[str, Any]:
    """What no learning scores: the train split's most frequent class predicted for every test pixel."""
    majority = int(class_histogram(train, "label_map", settings.num_classes).argmax())
    out: dict[str, Any] = {"predicts": majority, "rule": "majority class of the train split's pixels"}
    for name, tag in LABEL_EXTRAS.items():
        if name in test.extra_names:
            confusion = torch.zeros(settings.num_classes, settings.num_classes, dtype=torch.long)
            confusion[:, majority] = class_histogram(test, name, settings.num_classes)
            out[f"miou_{tag}"] = mean_iou(confusion)
            out[f"pixel_acc_{tag}"] = pixel_accuracy(confusion)
    return out


def train_segmentation(train_path: str | Path, test_path: str | Path, tokenizer: str, seed: int = 0,
                       settings: SegSettings | None = None) -> dict[str, Any]:
    """Train the segmenter on the train archive, evaluate on the test archive; returns the result record."""
    settings = settings or SegSettings()
    if tokenizer not in SEG_TOKENIZERS:
        raise IzooError(f"unknown segmentation tokenizer {tokenizer!r}", None, f"use one of {', '.join(SEG_TOKENIZERS)}")
    device = resolve_device(settings.device)
    torch.manual_seed(seed)
    np.random.seed(seed)
    train = open_archive(train_path, device="cpu", in_memory=settings.in_memory)
    test = open_archive(test_path, device="cpu", in_memory=settings.in_memory)
    _check_archive(train, "train")
    _check_archive(test, "test")
    if train.coordinate_convention != test.coordinate_convention:
        raise IzooError(f"train and test archives use different coordinate conventions ({train.coordinate_convention} "
                        f"vs {test.coordinate_convention})", test_path, "pass the train/test archives of one dataset")
    w0 = train.spec.w0
    convention = train.coordinate_convention
    model = InrSegmenter(settings, tokenizer, seed=seed, convention=convention).to(device)
    optimiser = torch.optim.AdamW(model.parameter_groups(settings), weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.PolynomialLR(optimiser, total_iters=settings.steps, power=settings.poly_power)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    gen = torch.Generator().manual_seed(seed)
    batches = _cycle(train, settings.batch_size, seed, settings.loader_workers, device.type == "cuda")
    start = time.time()
    losses: list[float] = []
    model.train()
    for step in range(settings.steps):
        batch = next(batches)
        params = [p.to(device) for p in batch["params"]]
        target = _labels(batch, "label_map", device)
        if settings.hflip:
            flip = torch.rand(target.shape[0], generator=gen) < 0.5
            params = hflip_params(params, flip.to(device))
            target = torch.where(flip.to(device)[:, None, None], target.flip(-1), target)
        lo, hi = settings.zoom_range
        if hi > 1.0:
            if lo < 1.0:
                raise IzooError(f"zoom_range {settings.zoom_range} zooms out", None,
                                "use ratios >= 1 (zoom-out would query the INR outside its domain)")
            ratio = lo + (hi - lo) * torch.rand(target.shape[0], generator=gen)
            offset = (torch.rand(target.shape[0], 2, generator=gen) * 2 - 1) * (1 - 1 / ratio[:, None])
            params, target = zoom_crop(params, target, ratio.to(device), offset.to(device), convention)
        logits = model(params, w0)
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss = criterion(logits, target)
        penalty = model.tokenizer.penalty()
        total = loss + settings.reg_weight * penalty
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if settings.log_every and (step + 1) % settings.log_every == 0:
            log.info("step %d/%d loss %.4f penalty %.4f", step + 1, settings.steps, float(loss), float(penalty))
    train_seconds = time.time() - start
    metrics = evaluate(model, test, settings, w0)
    flops = count_gflops(model, [p[:1].to(device) for p in train.params_batch([0])], w0)
    return {
        "benchmark": "segmentation",
        "tokenizer": tokenizer,
        "tokenizer_name": DISPLAY_NAMES[tokenizer],
        "seed": seed,
        "settings": dataclasses.asdict(settings),
        "train_archive": str(train_path),
        "test_archive": str(test_path),
        "dataset": train.attrs.get("dataset"),
        "n_train": len(train),
        "n_test": len(test),
        "inr": train.attrs.get("architecture"),
        "tokenizer_info": describe(model.tokenizer),
        "params": count_params(model),
        "params_m": count_params(model) / 1e6,
        **flops,
        **metrics,
        "reference": majority_reference(train, test, settings),
        "final_train_loss": float(np.mean(losses[-10:])) if losses else None,
        "train_seconds": train_seconds,
        "device": str(device),
        "torch": torch.__version__,
        "timm": timm.__version__,
    }


def write_json(record: Mapping[str, Any], path: str | Path) -> None:
    """Write a result record atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def mean_std(values: Sequence[float | None], scale: float = 1.0) -> tuple[float, float, int]:
    """Mean, sample std (0 for one value) and count of the finite values, each times ``scale``."""
    vals = [v * scale for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return math.nan, math.nan, 0
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def format_mean_std(mean: float, std: float, n: int) -> str:
    """``mean ± std`` with 2 decimals (just the mean for one seed, an en dash for none)."""
    if n == 0:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def read_runs(paths: Sequence[str | Path], benchmark: str) -> list[dict]:
    """Result records of ``benchmark`` from JSON files (one-line error for a missing or foreign file)."""
    runs = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise IzooError("result file is missing", path, "rerun the benchmark rule that writes it") from exc
        except json.JSONDecodeError as exc:
            raise IzooError(f"result file is not JSON ({exc})", path, "delete it and rerun its benchmark rule") from exc
        if record.get("benchmark") != benchmark:
            raise IzooError(f"not a {benchmark} result (benchmark={record.get('benchmark')!r})", path,
                            f"pass only izoo bench-{'segment' if benchmark == 'segmentation' else 'pose'} outputs")
        runs.append(record)
    return runs


def segmentation_table(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The paper's Table 3 from run records: one row per tokenizer, mIoU mean ± std over seeds (in %)."""
    rows = []
    order = {k: i for i, k in enumerate(SEG_TOKENIZERS)}
    for tok in sorted({r["tokenizer"] for r in runs}, key=lambda t: order.get(t, 99)):
        group = [r for r in runs if r["tokenizer"] == tok]
        fine = mean_std([r.get("miou_fine") for r in group], 100)
        coarse = mean_std([r.get("miou_coarse") for r in group], 100)
        rows.append({
            "method": f"SegFormer-B0 ({group[0]['settings']['encoder']})" + ("" if tok == "uniform" else
                                                                               f" + {DISPLAY_NAMES[tok]}"),
            "tokenizer": tok,
            "seeds": len(group),
            "params_m": float(np.mean([r["params_m"] for r in group])),
            "gflops": float(np.mean([r["gflops_paper_convention"] for r in group])),
            "gflops_network": float(np.mean([r["gflops_network"] for r in group])),
            "gflops_with_query": float(np.mean([r["gflops_with_query"] for r in group])),
            "miou_fine_mean": fine[0], "miou_fine_std": fine[1],
            "miou_coarse_mean": coarse[0], "miou_coarse_std": coarse[1],
            "miou_fine": format_mean_std(*fine), "miou_coarse": format_mean_std(*coarse),
            "resolution": f"{group[0]['settings']['height']}×{group[0]['settings']['width']}",
            "steps": group[0]["settings"]["steps"],
        })
    references = seed_references(runs)
    if references:
        fine = mean_std([r.get("miou_fine") for r in references], 100)
        coarse = mean_std([r.get("miou_coarse") for r in references], 100)
        rows.append({"method": f"no learning ({references[0]['rule']})", "tokenizer": "reference",
                     "seeds": len(references), "params_m": 0.0, "gflops": 0.0, "gflops_network": 0.0,
                     "gflops_with_query": 0.0, "miou_fine_mean": fine[0], "miou_fine_std": fine[1],
                     "miou_coarse_mean": coarse[0], "miou_coarse_std": coarse[1],
                     "miou_fine": format_mean_std(*fine), "miou_coarse": format_mean_std(*coarse),
                     "resolution": rows[-1]["resolution"] if rows else "", "steps": 0})
    return pd.DataFrame(rows)


def table_markdown(table: pd.DataFrame, columns: Mapping[str, str], title: str, note: str) -> str:
    """A markdown table of ``columns`` (key → header) with a title and a note line."""
    header = "| " + " | ".join(columns.values()) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [f"### {title}", "", header, sep]
    for _, row in table.iterrows():
        cells = []
        for key in columns:
            value = row[key]
            cells.append(f"{value:.2f}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", note, ""])


def write_table(table: pd.DataFrame, markdown: str, out_csv: str | Path, out_md: str | Path) -> None:
    """Write a table's CSV and markdown atomically."""
    with atomic_path(Path(out_csv)) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(Path(out_md)) as tmp:
        tmp.write_text(markdown)


def _run_segment(args: argparse.Namespace) -> int:
    settings = SegSettings.from_json(args.settings)
    if args.pretrained:
        settings.encoder_checkpoint = args.pretrained
    if args.device:
        settings.device = args.device
    record = train_segmentation(args.train, args.test, args.tokenizer, args.seed, settings)
    write_json(record, args.out)
    log.info("%s seed %d: mIoU fine %.2f %%", args.tokenizer, args.seed, 100 * record.get("miou_fine", math.nan))
    return 0


def _run_segment_table(args: argparse.Namespace) -> int:
    table = segmentation_table(read_runs(args.runs, "segmentation"))
    res = table["resolution"].iloc[0] if len(table) else "?"
    steps = table["steps"].iloc[0] if len(table) else "?"
    md = table_markdown(
        table, {"method": "Method", "params_m": "Params (M)", "gflops": "GFLOPs", "gflops_network": "GFLOPs (network)",
                "miou_fine": "mIoU fine ↑ (%)", "miou_coarse": "mIoU coarse ↑ (%)", "seeds": "seeds"},
        "Cityscapes-INR segmentation (the paper's Table 3)",
        f"Input {res}, {steps} steps; mean ± std over seeds. GFLOPs: one forward pass, counted by torch's "
        "FlopCounterMode; the INR query is included for learnable tokenizers only (the paper's convention; the "
        "network-only column excludes it). Paper (320×640, 40k steps): 39.95 / 40.33 (LC) / 40.61 (LP+reg).")
    write_table(table, md, args.out_csv, args.out_md)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench-segment`` and ``bench-segment-table`` to the ``izoo`` CLI."""
    p = subparsers.add_parser("bench-segment", help="train + evaluate the Cityscapes-INR segmentation benchmark")
    p.add_argument("--train", required=True, help="train archive (SIRENs with label_map extras)")
    p.add_argument("--test", required=True, help="evaluation archive (val split)")
    p.add_argument("--tokenizer", default="uniform", choices=SEG_TOKENIZERS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", default=None, help="JSON object or file overriding SegSettings (defaults = paper)")
    p.add_argument("--encoder-checkpoint", dest="pretrained", default=None,
                   help="local encoder checkpoint (timm pvt_v2_b0 state dict); overrides settings.encoder_checkpoint")
    p.add_argument("--device", default=None, help="auto (CUDA if present), cpu, cuda, ...")
    p.add_argument("--out", required=True, help="result JSON")
    p.set_defaults(func=_run_segment)
    t = subparsers.add_parser("bench-segment-table", help="Table 3 from bench-segment result files")
    t.add_argument("--runs", nargs="+", required=True)
    t.add_argument("--out-csv", required=True)
    t.add_argument("--out-md", required=True)
    t.set_defaults(func=_run_segment_table)
