"""SIREN: one plain ``nn.Module`` for reference and a batched functional form for B INRs at once.

Parameter layout (shared by the fitter, the shard files and the archives):
layer ``i`` has a weight ``[B, out_i, in_i]`` (torch ``nn.Linear`` convention, stacked over items)
and a bias ``[B, out_i]``. Every layer but the last is ``sin(w0 * (W x + b))``; the last is linear
(no sigmoid: images are fitted in ImageNet-normalised space).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PIXEL_CENTERS = "pixel_centers"
LINSPACE_ENDPOINTS = "linspace_endpoints"
#: Where pixel (row i, column j) of an H×W image sits; channel 0 = x (column, left→right), 1 = y (row, top→bottom)
#: in both. The archive attribute ``coordinate_convention`` holds one of these names.
COORDINATE_CONVENTIONS = {
    PIXEL_CENTERS: "pixel centres in (-1, 1): x_j = (2j + 1) / W - 1, y_i = (2i + 1) / H - 1",
    LINSPACE_ENDPOINTS: "linspace(-1, 1, N) including the end points: x_j = 2j / (W - 1) - 1, y_i = 2i / (H - 1) - 1 "
                        "(the released Implicit-Zoo and fit-a-nef grids)",
}
#: the convention izoo fits with; stored in every archive it writes
COORDINATE_CONVENTION = PIXEL_CENTERS

Params = list[torch.Tensor]  # [w0, b0, w1, b1, ...], each stacked over items (dim 0)


@dataclass(frozen=True)
class SirenSpec:
    """Architecture of one SIREN: ``depth`` counts every linear layer, the output head included."""

    depth: int = 3
    width: int = 64
    w0: float = 30.0
    in_features: int = 2
    out_features: int = 3
    init: str = "siren"  # "siren" (SIREN paper) or "released" (Implicit-Zoo code: first layer like the others, zero
    #                      sine biases, PyTorch's default nn.Linear head)

    def __post_init__(self) -> None:
        if self.depth < 2:
            raise ValueError(f"SIREN depth must be >= 2 (got {self.depth}): depth counts every linear layer")
        if self.width < 1:
            raise ValueError(f"SIREN width must be >= 1 (got {self.width})")
        if self.init not in ("siren", "released"):
            raise ValueError(f"SIREN init must be 'siren' or 'released' (got {self.init!r})")

    def layer_dims(self) -> list[tuple[int, int]]:
        """``(in, out)`` of every linear layer, first to last."""
        dims = [self.in_features] + [self.width] * (self.depth - 1) + [self.out_features]
        return list(zip(dims[:-1], dims[1:]))

    def param_shapes(self) -> list[tuple[int, ...]]:
        """Per-item shapes of ``[w0, b0, w1, b1, ...]`` (no batch dim)."""
        shapes: list[tuple[int, ...]] = []
        for fan_in, fan_out in self.layer_dims():
            shapes += [(fan_out, fan_in), (fan_out,)]
        return shapes

    def n_params(self) -> int:
        """Parameters of one INR."""
        return sum(math.prod(s) for s in self.param_shapes())

    def flops_per_pixel(self) -> int:
        """Multiply-adds ×2 of one forward pass at one coordinate (matmuls only)."""
        return sum(2 * i * o for i, o in self.layer_dims())

    def to_dict(self) -> dict:
        """Plain-dict form, stored as archive attributes."""
        return asdict(self)


def _item_generator(seed: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def init_params_single(spec: SirenSpec, seed: int) -> Params:
    """Initialise one SIREN (no batch dim) deterministically from ``seed`` on the CPU."""
    gen = _item_generator(seed)
    params: Params = []
    dims = spec.layer_dims()
    for layer, (fan_in, fan_out) in enumerate(dims):
        head = layer == len(dims) - 1
        if layer == 0 and spec.init == "siren":
            bound_w = 1.0 / fan_in
        elif head and spec.init == "released":
            bound_w = 1.0 / math.sqrt(fan_in)   # the released code's head is a default nn.Linear
        else:
            bound_w = math.sqrt(6.0 / fan_in) / spec.w0
        w = (torch.rand(fan_out, fan_in, generator=gen) * 2 - 1) * bound_w
        if spec.init == "released" and not head:
            b = torch.zeros(fan_out)   # the released sine layers zero their biases
        else:
            bound_b = 1.0 / math.sqrt(fan_in)  # torch nn.Linear's default bias init, kept by the SIREN code
            b = (torch.rand(fan_out, generator=gen) * 2 - 1) * bound_b
        params += [w, b]
    return params


def init_params(spec: SirenSpec, seeds: Sequence[int], device: torch.device | str = "cpu") -> Params:
    """Initialise B SIRENs, item ``i`` from ``seeds[i]`` (equal seeds give equal inits)."""
    cache: dict[int, Params] = {}
    per_item = []
    for s in seeds:
        if int(s) not in cache:
            cache[int(s)] = init_params_single(spec, int(s))
        per_item.append(cache[int(s)])
    return [torch.stack([p[k] for p in per_item]).to(device) for k in range(2 * spec.depth)]


def check_convention(convention: str) -> str:
    """``convention`` if it is a known coordinate convention, else ``ValueError``."""
    if convention not in COORDINATE_CONVENTIONS:
        raise ValueError(f"coordinate convention must be one of {sorted(COORDINATE_CONVENTIONS)} (got {convention!r})")
    return convention


def axis_coordinates(n: int, convention: str = PIXEL_CENTERS, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[n]`` coordinates of the pixels along one image axis under ``convention``."""
    if check_convention(convention) == LINSPACE_ENDPOINTS:
        return torch.linspace(-1.0, 1.0, n, device=device, dtype=torch.float32)
    return (torch.arange(n, device=device, dtype=torch.float32) * 2 + 1) / n - 1


def coordinate_grid(height: int, width: int, device: torch.device | str = "cpu",
                    convention: str = PIXEL_CENTERS) -> torch.Tensor:
    """``[H*W, 2]`` pixel coordinates in [-1, 1] under ``convention``, row-major, channel 0 = x, 1 = y."""
    ys = axis_coordinates(height, convention, device)
    xs = axis_coordinates(width, convention, device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


def change_convention(params: Params, source: str, target: str, height: int, width: int) -> Params:
    """The same images at ``height``×``width`` decoded on ``target``'s grid instead of ``source``'s (exact).

    Pixel ``j`` sits at ``2j/(W-1) - 1`` (linspace) and at ``(W-1)/W`` times that (pixel centres), so only the
    first layer's weight columns are rescaled; other resolutions render slightly differently than before.
    """
    check_convention(source)
    if check_convention(target) == source:
        return list(params)
    if height < 2 or width < 2:
        raise ValueError(f"a {height}x{width} grid has no linspace spacing; convert at 2x2 pixels or more")
    # a pixel-centre coordinate is the linspace coordinate scaled by (n-1)/n along each axis
    to_centres = torch.tensor([(width - 1) / width, (height - 1) / height], dtype=params[0].dtype,
                              device=params[0].device)
    scale = to_centres if source == PIXEL_CENTERS else 1.0 / to_centres
    return [params[0] * scale] + list(params[1:])


def forward(params: Params, coords: torch.Tensor, w0: float) -> torch.Tensor:
    """Evaluate B SIRENs: ``coords`` ``[P, in]`` (shared) or ``[B, P, in]`` → outputs ``[B, P, out]``.

    Plain autograd-friendly form (used for rendering, tokenizers and as the reference of the fitter).
    """
    n_layers = len(params) // 2
    batch = params[0].shape[0]
    h = coords if coords.dim() == 3 else coords.unsqueeze(0).expand(batch, -1, -1)
    for layer in range(n_layers):
        w, b = params[2 * layer], params[2 * layer + 1]
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if layer < n_layers - 1:
            h = torch.sin(w0 * h)
    return h


def normalise(images01: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` images in [0, 1] → ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=images01.device, dtype=images01.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images01.device, dtype=images01.dtype).view(3, 1, 1)
    return (images01 - mean) / std


def denormalise_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised RGB with channels last ``[..., 3]`` → [0, 1] scale (not clamped)."""
    mean = torch.tensor(IMAGENET_MEAN, device=rgb.device, dtype=rgb.dtype)
    std = torch.tensor(IMAGENET_STD, device=rgb.device, dtype=rgb.dtype)
    return rgb * std + mean


def render(params: Params, spec: SirenSpec, height: int, width: int, chunk: int = 65536,
           convention: str = PIXEL_CENTERS) -> torch.Tensor:
    """Render B SIRENs to ``[B, 3, H, W]`` images in [0, 1] at any resolution (chunked over pixels)."""
    coords = coordinate_grid(height, width, device=params[0].device, convention=convention)
    outs = []
    with torch.no_grad():
        for start in range(0, coords.shape[0], chunk):
            outs.append(forward(params, coords[start : start + chunk], spec.w0))
    rgb = denormalise_rgb(torch.cat(outs, dim=1)).clamp(0.0, 1.0)
    return rgb.transpose(1, 2).reshape(rgb.shape[0], spec.out_features, height, width)


class Siren(nn.Module):
    """One plain SIREN as ``nn.Sequential``-style layers (reference for the batched form)."""

    def __init__(self, spec: SirenSpec):
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in spec.layer_dims())

    @classmethod
    def from_params(cls, spec: SirenSpec, params: Params, item: int = 0) -> "Siren":
        """Build a module holding item ``item`` of stacked ``params``."""
        model = cls(spec)
        with torch.no_grad():
            for k, layer in enumerate(model.layers):
                layer.weight.copy_(params[2 * k][item])
                layer.bias.copy_(params[2 * k + 1][item])
        return model

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        h = coords
        for k, layer in enumerate(self.layers):
            h = layer(h)
            if k < len(self.layers) - 1:
                h = torch.sin(self.spec.w0 * h)
        return h
