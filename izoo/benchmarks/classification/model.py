"""The classifier: tokenizer (query coordinates) → differentiable RandAugment → timm ViT, and checkpoint loading."""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from izoo.benchmarks.classification.augment import OPS, RandAugmentINR, query_augmented
from izoo.benchmarks.classification.settings import INPUT_NORMS, MODEL_NAMES, ClassificationSettings
from izoo.benchmarks.tokenizers import TOKENIZERS, CoordinateTokenizer
from izoo.errors import IzooError
from izoo.siren import model as siren

log = logging.getLogger(__name__)


def load_checkpoint_into(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a local timm/torch ViT checkpoint; the class head is skipped when its shape differs, pos-embed resampled."""
    from timm.layers import resample_abs_pos_embed
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path), use_ema=True, device="cpu")
    except Exception as exc:  # torch/safetensors raise many types for a bad file; all mean the same to the user
        raise IzooError(f"cannot read the checkpoint ({type(exc).__name__}: {exc})", path,
                        "pass a torch .pth/.pt or .safetensors state dict of a timm ViT") from exc
    own = model.state_dict()
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        prefix = getattr(model, "num_prefix_tokens", 1)
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(model.patch_embed.grid_size),
                                                    num_prefix_tokens=prefix)
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for key in skipped:
        del state[key]
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped]
    if [k for k in missing if not k.startswith("head")]:
        raise IzooError(f"checkpoint does not fit the model (missing {missing[:4]}...)", path,
                        "pass a checkpoint of the same ViT architecture as settings.model")
    return {"skipped": skipped, "missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


def build_vit(settings: ClassificationSettings, num_classes: int) -> nn.Module:
    """timm ViT with a conv patch embedding (kernel = stride = patch) over the queried ``[B, 3, S, S]`` input."""
    name = MODEL_NAMES.get(settings.model, settings.model)
    try:
        vit = timm.create_model(name, pretrained=False, img_size=settings.image_size, patch_size=settings.patch,
                                num_classes=num_classes, **settings.model_kwargs)
    except (RuntimeError, TypeError) as exc:
        raise IzooError(f"cannot build model {settings.model!r} ({exc})", None,
                        f"use one of {sorted(MODEL_NAMES)} or a timm ViT name, with valid model_kwargs") from exc
    if settings.checkpoint:
        info = load_checkpoint_into(vit, settings.checkpoint)
        log.info("loaded %s (re-initialised: %s)", settings.checkpoint, info["skipped"] or "nothing")
    return vit


class InrClassifier(nn.Module):
    """Tokenizer (query coordinates) → optional differentiable RandAugment → timm ViT."""

    def __init__(self, tokenizer: CoordinateTokenizer, vit: nn.Module, w0: float,
                 augment: RandAugmentINR | None = None, amp: bool = True, input_norm: str = "imagenet"):
        super().__init__()
        self.tokenizer, self.vit, self.w0, self.augment, self.amp = tokenizer, vit, float(w0), augment, amp
        # x_vit = a * x_siren + b maps the SIRENs' ImageNet normalisation to the ViT's (identity for imagenet)
        mean, std = (torch.tensor(v).view(3, 1, 1) for v in INPUT_NORMS[input_norm])
        siren_mean, siren_std = (torch.tensor(v).view(3, 1, 1) for v in INPUT_NORMS["imagenet"])
        self.register_buffer("norm_scale", siren_std / std, persistent=False)
        self.register_buffer("norm_shift", (siren_mean - mean) / std, persistent=False)
        self.renormalise = input_norm != "imagenet"

    def query(self, params: siren.Params, generator: torch.Generator | None = None) -> torch.Tensor:
        """The grouped ``[B, 3, H, W]`` ViT input (augmented in training mode)."""
        coords = self.tokenizer.coordinates().reshape(-1, 2)
        augment = self.augment if self.training else None
        return query_augmented(params, coords, self.w0, self.tokenizer.height, self.tokenizer.width, augment,
                               generator)

    def forward(self, params: siren.Params, generator: torch.Generator | None = None) -> torch.Tensor:
        """Class logits ``[B, classes]``."""
        images = self.query(params, generator)
        if self.renormalise:
            images = images * self.norm_scale + self.norm_shift
        use_amp = self.amp and images.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            return self.vit(images).float()


def build_classifier(settings: ClassificationSettings, tokenizer: str, num_classes: int, spec: siren.SirenSpec,
                     seed: int = 0, convention: str = siren.PIXEL_CENTERS) -> InrClassifier:
    """The full model of one run (seeded: same seed, same initial weights and LP+rand grouping)."""
    if tokenizer not in TOKENIZERS:
        raise IzooError(f"unknown tokenizer {tokenizer!r}", None, f"use one of {', '.join(TOKENIZERS)}")
    torch.manual_seed(seed)
    size = settings.image_size
    tok = CoordinateTokenizer(tokenizer, size, size, settings.patch, seed=seed, convention=convention)
    aug_cfg = settings.augment
    augment = None
    if aug_cfg.get("enabled", True) and int(aug_cfg.get("n_ops", 2)) > 0:
        ops = tuple(aug_cfg.get("ops") or OPS)
        augment = RandAugmentINR(int(aug_cfg.get("n_ops", 2)), float(aug_cfg.get("magnitude", 9)), ops)
    return InrClassifier(tok, build_vit(settings, num_classes), spec.w0, augment, settings.amp, settings.input_norm)
