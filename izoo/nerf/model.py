"""NeRF MLP: a batched functional form for B scenes at once (stacked weights, one optimiser).

The architecture follows the official NeRF code (``nerf-pytorch``, coarse network only, ``use_viewdirs``)
at the paper's small size (4 trunk layers of width 128, no skip connection):

    γ(x) ─ layer0 ─ReLU─ layer1 ─ReLU─ ... ─ layer{D-1} ─ReLU─┬─ sigma  ─ ReLU            → density σ
                                                             └─ feature ─┐
                                          γ(d) ──────────────────────────┴─ view0 ─ReLU─ rgb ─ sigmoid → colour

``γ`` is the positional encoding ``[p, sin(2^0 p), cos(2^0 p), ..., sin(2^(L-1) p), cos(2^(L-1) p)]``
(no π factor, input included — exactly the official code), with ``L = pos_freqs`` for positions and
``L = dir_freqs`` for unit view directions.

Parameter layout (shared by the fitter, the shard files and the archives): an ordered ``dict`` of
``name -> tensor`` stacked over scenes, weights ``[B, out, in]`` (``nn.Linear`` convention), biases ``[B, out]``.
Names: ``layer{i}.weight/bias`` (trunk), ``sigma.*``, ``feature.*``, ``view0.*``, ``rgb.*``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import torch

NerfParams = dict[str, torch.Tensor]  # name -> [B, ...] stacked over scenes

#: Camera and scene conventions, stored in every NeRF archive.
CAMERA_CONVENTION = ("camera-to-world 4x4 poses, Blender/NeRF-synthetic convention (camera looks down -z, +y up); "
                     "ray through pixel (i=column, j=row) has camera direction ((i - W/2)/f, -(j - H/2)/f, -1) "
                     "as in the official NeRF code; white background")


@dataclass(frozen=True)
class NerfSpec:
    """Architecture of one NeRF: ``depth`` trunk layers of ``width`` units, no skip connection."""

    depth: int = 4
    width: int = 128
    pos_freqs: int = 10
    dir_freqs: int = 4

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"NeRF depth must be >= 1 (got {self.depth})")
        if self.width < 2:
            raise ValueError(f"NeRF width must be >= 2 (got {self.width})")
        if self.pos_freqs < 0 or self.dir_freqs < 0:
            raise ValueError(f"NeRF frequencies must be >= 0 (got {self.pos_freqs}, {self.dir_freqs})")

    @property
    def pos_channels(self) -> int:
        """Width of the encoded position ``γ(x)``."""
        return 3 + 3 * 2 * self.pos_freqs

    @property
    def dir_channels(self) -> int:
        """Width of the encoded view direction ``γ(d)``."""
        return 3 + 3 * 2 * self.dir_freqs

    def layer_dims(self) -> dict[str, tuple[int, int]]:
        """``name -> (in, out)`` of every linear layer, in evaluation order."""
        dims = {f"layer{i}": (self.pos_channels if i == 0 else self.width, self.width) for i in range(self.depth)}
        dims["sigma"] = (self.width, 1)
        dims["feature"] = (self.width, self.width)
        dims["view0"] = (self.width + self.dir_channels, self.width // 2)
        dims["rgb"] = (self.width // 2, 3)
        return dims

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-scene shapes of every parameter tensor (no batch dim), keyed by archive name."""
        shapes: dict[str, tuple[int, ...]] = {}
        for name, (fan_in, fan_out) in self.layer_dims().items():
            shapes[f"{name}.weight"] = (fan_out, fan_in)
            shapes[f"{name}.bias"] = (fan_out,)
        return shapes

    def param_names(self) -> list[str]:
        """Parameter names in their canonical order."""
        return list(self.param_shapes())

    def n_params(self) -> int:
        """Parameters of one NeRF."""
        return sum(math.prod(s) for s in self.param_shapes().values())

    def flops_per_sample(self) -> int:
        """Multiply-adds ×2 of one MLP evaluation at one 3D sample (matmuls only)."""
        return sum(2 * i * o for i, o in self.layer_dims().values())

    def to_dict(self) -> dict:
        """Plain-dict form with the layer shapes, stored as the archive's ``architecture`` attribute."""
        return {
            "family": "nerf",
            **asdict(self),
            "skips": [],
            "pos_encoding": "identity + sin/cos(2^k x), k = 0..pos_freqs-1 (no pi factor)",
            "dir_encoding": "identity + sin/cos(2^k d), k = 0..dir_freqs-1, d = unit ray direction",
            "activations": {"trunk": "relu", "sigma": "relu", "view0": "relu", "rgb": "sigmoid"},
            "layer_shapes": {k: list(v) for k, v in self.param_shapes().items()},
            "n_params": self.n_params(),
        }

    @classmethod
    def from_dict(cls, arch: Mapping) -> "NerfSpec":
        """Rebuild a spec from a model config or an archive's ``architecture`` attribute (extra keys ignored)."""
        return cls(depth=int(arch.get("depth", 4)), width=int(arch.get("width", 128)),
                   pos_freqs=int(arch.get("pos_freqs", 10)), dir_freqs=int(arch.get("dir_freqs", 4)))


def init_params_single(spec: NerfSpec, seed: int) -> NerfParams:
    """Initialise one NeRF (no batch dim) from ``seed`` on the CPU, like ``nn.Linear``'s default init.

    Written out instead of building ``nn.Linear`` modules so the result depends only on ``seed`` (not on the
    global RNG) and matches ``nn.Linear``: weight and bias ~ U(-1/√in, 1/√in).
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    params: NerfParams = {}
    for name, (fan_in, fan_out) in spec.layer_dims().items():
        bound = 1.0 / math.sqrt(fan_in)
        params[f"{name}.weight"] = (torch.rand(fan_out, fan_in, generator=gen) * 2 - 1) * bound
        params[f"{name}.bias"] = (torch.rand(fan_out, generator=gen) * 2 - 1) * bound
    return params


def init_params(spec: NerfSpec, seeds: Sequence[int], device: torch.device | str = "cpu") -> NerfParams:
    """Initialise B NeRFs, scene ``i`` from ``seeds[i]`` (equal seeds give equal inits)."""
    cache: dict[int, NerfParams] = {}
    for s in seeds:
        if int(s) not in cache:
            cache[int(s)] = init_params_single(spec, int(s))
    return {name: torch.stack([cache[int(s)][name] for s in seeds]).to(device) for name in spec.param_names()}


def positional_encoding(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """``[..., 3]`` → ``[..., 3 + 6 n_freqs]``: input, then sin and cos of ``2^k x`` per frequency (official order)."""
    if n_freqs == 0:
        return x
    freqs = 2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)
    scaled = x.unsqueeze(-2) * freqs.unsqueeze(-1)  # [..., L, 3]
    # official order per frequency: sin(2^k x) (3 values) then cos(2^k x) (3 values)
    enc = torch.stack([torch.sin(scaled), torch.cos(scaled)], dim=-2)  # [..., L, 2, 3]
    return torch.cat([x, enc.flatten(-3)], dim=-1)


def _linear(params: Mapping[str, torch.Tensor], name: str, h: torch.Tensor) -> torch.Tensor:
    """Batched affine map of layer ``name``: ``h`` ``[B, P, in]`` → ``[B, P, out]``."""
    return torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), h, params[f"{name}.weight"].transpose(1, 2))


def query(params: Mapping[str, torch.Tensor], xyz: torch.Tensor, dirs: torch.Tensor,
          spec: NerfSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate B NeRFs at ``xyz`` ``[B, P, 3]`` seen along ``dirs`` ``[B, P, 3]`` → ``rgb [B, P, 3]``, ``sigma [B, P]``.

    ``dirs`` need not be unit length (they are normalised here). ``spec`` is inferred from the shapes when omitted.
    """
    if spec is None:
        spec = spec_from_params(params)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    h = positional_encoding(xyz, spec.pos_freqs)
    for i in range(spec.depth):
        h = torch.relu(_linear(params, f"layer{i}", h))
    sigma = torch.relu(_linear(params, "sigma", h)).squeeze(-1)
    feature = _linear(params, "feature", h)
    h = torch.relu(_linear(params, "view0", torch.cat([feature, positional_encoding(dirs, spec.dir_freqs)], dim=-1)))
    rgb = torch.sigmoid(_linear(params, "rgb", h))
    return rgb, sigma


def spec_from_params(params: Mapping[str, torch.Tensor]) -> NerfSpec:
    """Recover the architecture from stacked parameter shapes (frequencies from the input widths)."""
    depth = sum(1 for k in params if k.startswith("layer") and k.endswith(".weight"))
    width = int(params["layer0.weight"].shape[-2])
    pos_in = int(params["layer0.weight"].shape[-1])
    dir_in = int(params["view0.weight"].shape[-1]) - width
    return NerfSpec(depth=depth, width=width, pos_freqs=(pos_in - 3) // 6, dir_freqs=(dir_in - 3) // 6)


def batch_params(params: Mapping[str, torch.Tensor], spec: NerfSpec) -> NerfParams:
    """Add the scene dim to one scene's parameters if it lacks it (per-scene shapes → ``[1, ...]``)."""
    shapes = spec.param_shapes()
    out: NerfParams = {}
    for name in spec.param_names():
        value = torch.as_tensor(params[name])
        out[name] = value.unsqueeze(0) if tuple(value.shape) == shapes[name] else value
    return out
