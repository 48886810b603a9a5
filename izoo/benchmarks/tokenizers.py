"""Learnable tokenizers over 2D INRs: where each token queries its pixels, learned end to end.

Every tokenizer owns a ``[H, W, 2]`` grid of query coordinates laid out like an image: the
``patch × patch`` block at block-row ``r``, block-column ``c`` is the group of coordinates that
becomes token ``r * (W // patch) + c``. Querying the SIREN at that grid gives a ``[B, 3, H, W]``
"image" whose conv patch embedding (kernel = stride = patch) turns each group into one token, so
every tokenizer reuses timm's ViT unchanged.

Kinds (supplementary §2 of the paper): pixel centre ``x_ij = c_i + s_i d_ij`` with patch centre
``c_i`` and offset ``d_ij`` of pixel ``j`` from it.

=========  ===========================================================================================
kind       query coordinates
=========  ===========================================================================================
uniform    the pixel-centre grid, fixed (plain patchify)
s          ``c_i + s_i d_ij``; ``c_i`` fixed, ``s_i = 1 + tanh(ρ_i)`` learnable per patch (ρ_i = 0 at start)
lc         as ``s`` with the centres ``c_i`` learnable too
lp         every coordinate learnable: ``x = sin(θ)``, θ initialised at ``asin`` of the pixel grid
lp_rand    as ``lp``, but the grid is shuffled at start: each token groups random pixels
lp_reg     as ``lp``, plus the non-close penalty ``Σ_i Σ_{j≠i} ReLU(α − ‖x_i − x_j‖₂)`` per token
=========  ===========================================================================================

The paper only says tanh keeps the scale non-negative; ``1 + tanh(ρ)`` is the form that starts at the
uniform grid (``s = 1``) and stays in (0, 2).
"""

from __future__ import annotations

import torch
from torch import nn

from izoo.config import schema_names
from izoo.siren import model as siren

#: tokenizer kinds, in the order of the paper's Table 2
TOKENIZERS = schema_names("tokenizer")
#: display names used in the results table (the paper's abbreviations)
DISPLAY_NAMES = {"uniform": "ViT (uniform)", "s": "S", "lc": "LC", "lp": "LP", "lp_rand": "LP+rand",
                 "lp_reg": "LP+reg"}


def pixel_grid(height: int, width: int, device: torch.device | str = "cpu",
               convention: str = siren.PIXEL_CENTERS) -> torch.Tensor:
    """Pixel coordinates as an image ``[H, W, 2]`` (channel 0 = x, 1 = y), as ``siren.coordinate_grid``."""
    return siren.coordinate_grid(height, width, device=device, convention=convention).reshape(height, width, 2)


def group_tokens(coords: torch.Tensor, patch: int) -> torch.Tensor:
    """``[H, W, 2]`` coordinate image → ``[N_tokens, patch², 2]``, one row per token (block-row-major)."""
    height, width, dims = coords.shape
    blocks = coords.reshape(height // patch, patch, width // patch, patch, dims)
    return blocks.permute(0, 2, 1, 3, 4).reshape(-1, patch * patch, dims)


def token_ids(height: int, width: int, patch: int) -> torch.Tensor:
    """``[H, W]`` index of the token each grid slot belongs to (block-row-major)."""
    rows = torch.arange(height) // patch
    cols = torch.arange(width) // patch
    return rows[:, None] * (width // patch) + cols[None, :]


def non_close_alpha(height: int, width: int) -> float:
    """The paper's threshold α = min(1/H, 1/W)."""
    return min(1.0 / height, 1.0 / width)


def non_close_penalty(tokens: torch.Tensor, alpha: float, eps: float = 1e-12) -> torch.Tensor:
    """``Σ_tokens Σ_i Σ_{j≠i} ReLU(α − ‖x_i − x_j‖₂)`` for ``tokens`` ``[N, M, 2]`` (the paper's Eq. 1, summed over tokens)."""
    diff = tokens[:, :, None, :] - tokens[:, None, :, :]
    # eps keeps the gradient of the norm finite when two points coincide (the case the penalty exists for)
    dist = torch.sqrt((diff * diff).sum(-1) + eps)
    off_diagonal = ~torch.eye(tokens.shape[1], dtype=torch.bool, device=tokens.device)
    return torch.relu(alpha - dist)[:, off_diagonal].sum()


class CoordinateTokenizer(nn.Module):
    """Query coordinates of one tokenizer kind; ``forward(params, w0)`` renders the grouped ``[B, 3, H, W]`` input."""

    def __init__(self, kind: str, height: int, width: int, patch: int, seed: int = 0,
                 convention: str = siren.PIXEL_CENTERS):
        super().__init__()
        if kind not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {kind!r}; choose one of {', '.join(TOKENIZERS)}")
        if height % patch or width % patch:
            raise ValueError(f"image size {height}×{width} is not a multiple of the patch size {patch}")
        self.kind, self.height, self.width, self.patch = kind, height, width, patch
        self.convention = siren.check_convention(convention)  # the INRs' grid: initial coordinates sit on it
        self.alpha = non_close_alpha(height, width)
        grid = pixel_grid(height, width, convention=convention)
        if kind in ("uniform",):
            self.register_buffer("grid", grid)
        elif kind in ("s", "lc"):
            blocks = grid.reshape(height // patch, patch, width // patch, patch, 2)
            centres = blocks.mean(dim=(1, 3))                                  # [Nh, Nw, 2]
            offsets = blocks[0, :, 0, :, :] - centres[0, 0]                    # [P, P, 2], the same for every patch
            self.register_buffer("offsets", offsets)
            if kind == "lc":
                self.centres = nn.Parameter(centres)
            else:
                self.register_buffer("centres", centres)
            self.scale_logit = nn.Parameter(torch.zeros(height // patch, width // patch))
        else:
            start = grid
            if kind == "lp_rand":
                gen = torch.Generator().manual_seed(int(seed))
                order = torch.randperm(height * width, generator=gen)
                start = grid.reshape(-1, 2)[order].reshape(height, width, 2)
            # the pixel grid lies inside [-1, 1], so asin is finite and sin(θ) starts exactly on it (linspace grids
            # put the border at ±1, where sin has zero slope: those coordinates start with no gradient)
            self.theta = nn.Parameter(torch.asin(start))

    @property
    def learnable(self) -> bool:
        """Whether the coordinates carry trainable parameters."""
        return any(p.requires_grad for p in self.parameters())

    def scales(self) -> torch.Tensor | None:
        """Per-patch scale ``[Nh, Nw]`` for ``s``/``lc`` (``None`` otherwise)."""
        if self.kind not in ("s", "lc"):
            return None
        return 1.0 + torch.tanh(self.scale_logit)

    def coordinates(self) -> torch.Tensor:
        """The current query coordinates as an image ``[H, W, 2]``."""
        if self.kind == "uniform":
            return self.grid
        if self.kind in ("s", "lc"):
            n_rows, n_cols = self.height // self.patch, self.width // self.patch
            scale = self.scales()[:, None, :, None, None]
            coords = self.centres[:, None, :, None, :] + scale * self.offsets[None, :, None, :, :]
            return coords.reshape(n_rows * self.patch, n_cols * self.patch, 2)
        return torch.sin(self.theta)

    def penalty(self) -> torch.Tensor:
        """The non-close penalty for ``lp_reg``; a zero scalar for every other kind."""
        if self.kind != "lp_reg":
            return torch.zeros((), device=self._device())
        return non_close_penalty(group_tokens(self.coordinates(), self.patch), self.alpha)

    def _device(self) -> torch.device:
        tensors = list(self.parameters()) + list(self.buffers())
        return tensors[0].device

    def forward(self, params: siren.Params, w0: float) -> torch.Tensor:
        """Query B SIRENs at the grouped coordinates → ``[B, 3, H, W]`` (ImageNet-normalised RGB)."""
        flat = self.coordinates().reshape(-1, 2)
        rgb = siren.forward(params, flat, w0)
        return rgb.transpose(1, 2).reshape(rgb.shape[0], rgb.shape[2], self.height, self.width)


def describe(tokenizer: CoordinateTokenizer) -> dict:
    """Small JSON-able summary of a tokenizer: kind, grid, patch, α, learnable parameter count."""
    return {
        "kind": tokenizer.kind,
        "height": tokenizer.height,
        "width": tokenizer.width,
        "patch": tokenizer.patch,
        "coordinate_convention": tokenizer.convention,
        "tokens": (tokenizer.height // tokenizer.patch) * (tokenizer.width // tokenizer.patch),
        "alpha": tokenizer.alpha,
        "learnable_params": int(sum(p.numel() for p in tokenizer.parameters() if p.requires_grad)),
    }
