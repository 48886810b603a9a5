"""The segmenter: tokenizer → timm hierarchical encoder → SegFormer all-MLP head, and its GFLOPs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from izoo.benchmarks.segmentation.settings import SegSettings
from izoo.benchmarks.tokenizers import CoordinateTokenizer
from izoo.errors import IzooError
from izoo.siren import model as siren


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
