"""Segmentation benchmark settings, its tokenizers (the paper's Table 3 rows) and the label maps it evaluates."""

from __future__ import annotations

from dataclasses import dataclass, field

from izoo.config import schema_names
from izoo.jsonargs import settings_from_json

#: tokenizers of the paper's Table 3, in its row order
SEG_TOKENIZERS = schema_names("segmentation_tokenizer")
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
