"""The pose regressor: 3D volume tokenizer, ViT volume encoder + fusion transformer, and its MAE pre-training."""

from __future__ import annotations

from typing import Mapping

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from izoo.benchmarks.pose.geometry import rotation_6d_to_matrix
from izoo.benchmarks.pose.settings import POSE_TOKENIZERS, PoseSettings
from izoo.benchmarks.tokenizers import non_close_penalty
from izoo.nerf.model import NerfSpec, query


class VolumeTokenizer(nn.Module):
    """3D tokenizer: where each of the ``(R/P)³`` volume tokens queries its ``P³`` points, then a 3D conv embeds them.

    ``uniform``: the cell-centre grid of ``[-bound, bound]³`` (what ``izoo.nerf.query_grid`` samples); ``lc``: per
    volume a learnable centre and scale ``1 + tanh(ρ)``; ``lp`` / ``lp_reg``: every point learnable as
    ``bound · sin(θ)`` (``lp_reg`` adds the non-close penalty, α = bound-scaled min cell size), as the 2D tokenizers.
    Values are RGB and occupancy ``1 − exp(−σ δ)`` (δ = cell size), which keeps densities in [0, 1); with ``ink``
    the colour is ``(1 − RGB) · occupancy`` instead, 0 in empty space whatever colour the NeRF gives it there.
    """

    def __init__(self, kind: str, resolution: int, volume_size: int, bound: float, dim: int, ink: bool = False):
        super().__init__()
        self.kind, self.resolution, self.volume_size, self.bound = kind, resolution, volume_size, bound
        self.ink = ink
        n_side, p = resolution // volume_size, volume_size
        self.n_tokens = n_side ** 3
        axis = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 * bound - bound
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # [R, R, R, 3] (x, y, z)
        blocks = grid.reshape(n_side, p, n_side, p, n_side, p, 3).permute(0, 2, 4, 1, 3, 5, 6)
        blocks = blocks.reshape(self.n_tokens, p ** 3, 3)                             # [N, P³, 3]
        centres = blocks.mean(dim=1)
        self.cell = 2 * bound / resolution
        self.alpha = self.cell / 2  # the 2D α = min(1/H, 1/W) is half a cell of the (-1, 1) grid
        if kind == "uniform":
            self.register_buffer("points0", blocks)
        elif kind == "lc":
            self.register_buffer("offsets", blocks - centres[:, None, :])
            self.centres = nn.Parameter(centres)
            self.scale_logit = nn.Parameter(torch.zeros(self.n_tokens, 1, 1))
        elif kind in ("lp", "lp_reg"):
            self.theta = nn.Parameter(torch.asin(blocks / bound))
        else:
            raise ValueError(f"unknown volume tokenizer {kind!r}; choose one of {POSE_TOKENIZERS}")
        self.embed = nn.Conv3d(4, dim, kernel_size=p, stride=p)

    def points(self) -> torch.Tensor:
        """Current query points ``[N, P³, 3]``."""
        if self.kind == "uniform":
            return self.points0
        if self.kind == "lc":
            return self.centres[:, None, :] + (1.0 + torch.tanh(self.scale_logit)) * self.offsets
        return self.bound * torch.sin(self.theta)

    def penalty(self) -> torch.Tensor:
        """Non-close penalty of ``lp_reg`` (zero otherwise)."""
        if self.kind != "lp_reg":
            return torch.zeros((), device=self.embed.weight.device)
        return non_close_penalty(self.points(), self.alpha)

    def coordinate_parameters(self) -> list[nn.Parameter]:
        """The learnable query coordinates (empty for ``uniform``)."""
        return [p for name, p in self.named_parameters() if not name.startswith("embed.")]

    def values(self, nerf: Mapping[str, torch.Tensor], spec: NerfSpec) -> torch.Tensor:
        """Query B NeRFs → ``[B, N, P³, 4]`` (RGB, occupancy); differentiable w.r.t. the learnable points."""
        pts = self.points()
        batch = nerf["layer0.weight"].shape[0]
        flat = pts.reshape(1, -1, 3).expand(batch, -1, 3)
        dirs = torch.tensor((0.0, 0.0, -1.0), device=flat.device).expand_as(flat)  # query_grid's fixed direction
        rgb, sigma = query(nerf, flat, dirs, spec)
        occupancy = (1.0 - torch.exp(-sigma * self.cell)).unsqueeze(-1)
        colour = (1.0 - rgb) * occupancy if self.ink else rgb
        return torch.cat([colour, occupancy], dim=-1).reshape(batch, *pts.shape[:2], 4)

    def embed_values(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, N, P³, 4]`` → tokens ``[B, N, dim]`` by the 3D conv (values laid out as a block volume)."""
        batch, p, n_side = values.shape[0], self.volume_size, self.resolution // self.volume_size
        vol = values.reshape(batch, n_side, n_side, n_side, p, p, p, 4).permute(0, 7, 1, 4, 2, 5, 3, 6)
        vol = vol.reshape(batch, 4, self.resolution, self.resolution, self.resolution)
        return self.embed(vol).flatten(2).transpose(1, 2)


class PoseRegressor(nn.Module):
    """NeRF volume tokens + image tokens → transformer → rotation (6D) and translation of the camera."""

    def __init__(self, s: PoseSettings):
        super().__init__()
        self.settings = s
        self.tokenizer = VolumeTokenizer(s.tokenizer, s.grid_resolution, s.volume_size, s.grid_bound, s.dim, s.ink)
        n_vol, n_img = self.tokenizer.n_tokens, (s.image_size // s.image_patch) ** 2
        self.volume_pos = nn.Parameter(torch.zeros(1, n_vol, s.dim))
        self.volume_blocks = nn.ModuleList(Block(s.dim, s.heads, s.mlp_ratio, qkv_bias=True)
                                           for _ in range(s.volume_depth))
        self.volume_norm = nn.LayerNorm(s.dim)
        self.image_embed = nn.Conv2d(3, s.dim, s.image_patch, s.image_patch)
        self.image_pos = nn.Parameter(torch.zeros(1, n_img, s.dim))
        self.pose_token = nn.Parameter(torch.zeros(1, 1, s.dim))
        self.fusion_blocks = nn.ModuleList(Block(s.dim, s.heads, s.mlp_ratio, qkv_bias=True)
                                           for _ in range(s.fusion_depth))
        self.norm = nn.LayerNorm(s.dim)
        self.head = nn.Linear(s.dim, 9)
        for p in (self.volume_pos, self.image_pos, self.pose_token):
            trunc_normal_(p, std=0.02)
        with torch.no_grad():  # start at the identity rotation, object one radius ahead (cameras look down −z)
            self.head.weight.mul_(0.01)
            self.head.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0]))

    def volume_encoder_modules(self) -> list[nn.Module]:
        """The parts MAE pre-trains (tokenizer embedding, positions, volume blocks, norm)."""
        return [self.tokenizer.embed, self.volume_blocks, self.volume_norm]

    def encode_volume(self, nerf: Mapping[str, torch.Tensor], spec: NerfSpec) -> torch.Tensor:
        """``[S, N_vol, dim]`` volume features of S scenes."""
        x = self.tokenizer.embed_values(self.tokenizer.values(nerf, spec)) + self.volume_pos
        for block in self.volume_blocks:
            x = block(x)
        return self.volume_norm(x)

    def forward(self, nerf: Mapping[str, torch.Tensor], spec: NerfSpec,
                images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` ``[S, V, 3, h, w]`` in [0, 1] of S scenes → rotations ``[S, V, 3, 3]``, world-to-camera translations
        ``[S, V, 3]`` (``compose_c2w`` turns them into camera-to-world poses)."""
        n_scenes, n_views = images.shape[:2]
        if self.settings.ink:
            images = 1.0 - images  # the white background becomes 0, the object carries the signal
        vol = self.encode_volume(nerf, spec)
        vol = vol.unsqueeze(1).expand(-1, n_views, -1, -1).reshape(n_scenes * n_views, *vol.shape[1:])
        img = self.image_embed(images.flatten(0, 1)).flatten(2).transpose(1, 2) + self.image_pos
        x = torch.cat([self.pose_token.expand(img.shape[0], -1, -1), vol, img], dim=1)
        for block in self.fusion_blocks:
            x = block(x)
        out = self.head(self.norm(x[:, 0]))
        rot = rotation_6d_to_matrix(out[:, :6])
        # translation in units of the camera radius keeps the regression target O(1)
        t_cam = out[:, 6:] * self.settings.camera_radius
        return rot.view(n_scenes, n_views, 3, 3), t_cam.view(n_scenes, n_views, 3)


class VolumeMAE(nn.Module):
    """MAE pre-training of the volume encoder (He et al.; 3D as Feichtenhofer et al.): mask 80 % of the volume tokens,
    encode the visible ones, an 8-layer decoder with a shared mask token reconstructs every token's RGB + occupancy."""

    def __init__(self, model: PoseRegressor, s: PoseSettings):
        super().__init__()
        self.model = model
        self.decoder_embed = nn.Linear(s.dim, s.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, s.dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, model.tokenizer.n_tokens, s.dim))
        self.decoder_blocks = nn.ModuleList(Block(s.dim, s.heads, s.mlp_ratio, qkv_bias=True)
                                            for _ in range(s.mae_decoder_depth))
        self.decoder_norm = nn.LayerNorm(s.dim)
        self.decoder_pred = nn.Linear(s.dim, s.volume_size ** 3 * 4)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.decoder_pos, std=0.02)
        self.mask_ratio = s.mae_mask_ratio

    def forward(self, nerf: Mapping[str, torch.Tensor], spec: NerfSpec, generator: torch.Generator) -> torch.Tensor:
        """MSE of the reconstructed values on the masked tokens."""
        tok = self.model.tokenizer
        with torch.no_grad():  # targets (and pre-training inputs) at the tokenizer's current, frozen points
            values = tok.values(nerf, spec)
        x = tok.embed_values(values) + self.model.volume_pos
        batch, n, dim = x.shape
        n_keep = max(1, int(round(n * (1 - self.mask_ratio))))
        noise = torch.rand(batch, n, generator=generator).to(x.device)
        order = noise.argsort(dim=1)
        keep = order[:, :n_keep]
        x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, dim))
        for block in self.model.volume_blocks:
            x = block(x)
        x = self.decoder_embed(self.model.volume_norm(x))
        full = self.mask_token.expand(batch, n, dim).clone()
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, dim), x) + self.decoder_pos
        for block in self.decoder_blocks:
            full = block(full)
        pred = self.decoder_pred(self.decoder_norm(full))
        masked = torch.ones(batch, n, dtype=torch.bool, device=x.device)
        masked.scatter_(1, keep, False)
        err = (pred - values.flatten(2)).pow(2).mean(-1)
        return (err * masked).sum() / masked.sum()
