"""Volume rendering of batched NeRFs: rays, stratified sampling, alpha compositing on white, grids.

Follows the official NeRF code (``raw2outputs``): ``δ_k = t_{k+1} − t_k`` (the last one 1e10) scaled by the ray
direction's length, ``α_k = 1 − exp(−σ_k δ_k)``, ``w_k = α_k Π_{j<k}(1 − α_j)``, colour ``Σ w_k c_k`` plus
``(1 − Σ w_k)`` of white background.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from izoo.nerf.model import NerfSpec, batch_params, query

#: default half-extent of the cube queried by ``query_grid``: Blender/OmniObject3D-style scenes are normalised
#: to lie inside [-1.5, 1.5]^3 with cameras at radius ~4 (near/far [2, 6])
DEFAULT_GRID_BOUND = 1.5


def get_rays(height: int, width: int, focal: float, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of every pixel: ``c2w`` ``[..., 4, 4]`` (or ``[..., 3, 4]``) → origins, directions ``[..., H, W, 3]``.

    Directions are not normalised (the official code's convention: camera-space z component −1).
    """
    device, dtype = c2w.device, c2w.dtype
    j, i = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                          torch.arange(width, device=device, dtype=dtype), indexing="ij")
    cam_dirs = torch.stack([(i - width * 0.5) / focal, -(j - height * 0.5) / focal, -torch.ones_like(i)], dim=-1)
    rot = c2w[..., :3, :3]
    rays_d = torch.einsum("hwc,...rc->...hwr", cam_dirs, rot)
    rays_o = c2w[..., :3, 3][..., None, None, :].expand_as(rays_d)
    return rays_o, rays_d


def pixel_rays(pixels_ij: torch.Tensor, focal: torch.Tensor | float, height: int, width: int,
               c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of chosen pixels: ``pixels_ij`` ``[..., 2]`` (column i, row j), ``c2w`` ``[..., 4, 4]`` per ray."""
    i, j = pixels_ij[..., 0].to(c2w.dtype), pixels_ij[..., 1].to(c2w.dtype)
    focal = torch.as_tensor(focal, device=c2w.device, dtype=c2w.dtype)
    cam_dirs = torch.stack([(i - width * 0.5) / focal, -(j - height * 0.5) / focal, -torch.ones_like(i)], dim=-1)
    rays_d = torch.einsum("...c,...rc->...r", cam_dirs, c2w[..., :3, :3])
    return c2w[..., :3, 3].expand_as(rays_d), rays_d


def sample_depths(n_rays_shape: tuple[int, ...], near: float, far: float, n_samples: int, perturb: bool,
                  device: torch.device | str, generator: torch.Generator | None = None,
                  jitter: torch.Tensor | None = None) -> torch.Tensor:
    """Stratified depths ``[..., n_samples]``: evenly spaced in [near, far], jittered uniformly within bins if ``perturb``.

    ``jitter`` (uniform [0, 1) values of the output's shape) replaces the draw from ``generator`` when given.
    """
    t = torch.linspace(0.0, 1.0, n_samples, device=device)
    z = (near * (1.0 - t) + far * t).expand(*n_rays_shape, n_samples)
    if not perturb:
        return z.contiguous()
    mids = 0.5 * (z[..., 1:] + z[..., :-1])
    upper = torch.cat([mids, z[..., -1:]], dim=-1)
    lower = torch.cat([z[..., :1], mids], dim=-1)
    u = jitter if jitter is not None else torch.rand(z.shape, device=device, generator=generator)
    return lower + (upper - lower) * u


def composite(rgb: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor, rays_d: torch.Tensor,
              white_bkgd: bool = True) -> dict[str, torch.Tensor]:
    """Alpha-composite samples ``rgb [..., S, 3]``, ``sigma [..., S]`` at depths ``z [..., S]`` along ``rays_d [..., 3]``."""
    deltas = torch.cat([z[..., 1:] - z[..., :-1], torch.full_like(z[..., :1], 1e10)], dim=-1)
    deltas = deltas * rays_d.norm(dim=-1, keepdim=True)
    alpha = 1.0 - torch.exp(-sigma * deltas)
    # exclusive cumulative transmittance; the 1e-10 keeps the product differentiable, as in the official code
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha[..., :-1] + 1e-10], dim=-1), dim=-1)
    weights = alpha * trans
    acc = weights.sum(dim=-1)
    colour = (weights.unsqueeze(-1) * rgb).sum(dim=-2)
    if white_bkgd:
        colour = colour + (1.0 - acc).unsqueeze(-1)
    depth = (weights * z).sum(dim=-1)
    return {"rgb": colour, "depth": depth, "acc": acc, "weights": weights}


FieldFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def render_field(field: FieldFn, rays_o: torch.Tensor, rays_d: torch.Tensor, near: float = 2.0, far: float = 6.0,
                 n_samples: int = 64, perturb: bool = False, white_bkgd: bool = True,
                 generator: torch.Generator | None = None, jitter: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Render rays ``[B, R, 3]`` through any radiance field ``field(xyz [B,P,3], dirs [B,P,3]) -> (rgb, sigma)``."""
    batch, n_rays = rays_o.shape[:2]
    z = sample_depths((batch, n_rays), near, far, n_samples, perturb, rays_o.device, generator, jitter)
    pts = rays_o.unsqueeze(-2) + rays_d.unsqueeze(-2) * z.unsqueeze(-1)  # [B, R, S, 3]
    dirs = rays_d.unsqueeze(-2).expand_as(pts)
    rgb, sigma = field(pts.reshape(batch, -1, 3), dirs.reshape(batch, -1, 3))
    return composite(rgb.reshape(batch, n_rays, n_samples, 3), sigma.reshape(batch, n_rays, n_samples), z, rays_d,
                     white_bkgd)


def render_rays(params: Mapping[str, torch.Tensor], spec: NerfSpec, rays_o: torch.Tensor, rays_d: torch.Tensor,
                near: float = 2.0, far: float = 6.0, n_samples: int = 64, perturb: bool = False,
                white_bkgd: bool = True, generator: torch.Generator | None = None,
                jitter: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Render rays ``[B, R, 3]`` of B NeRFs → ``rgb [B, R, 3]``, ``depth``, ``acc [B, R]``, ``weights [B, R, S]``."""
    return render_field(lambda xyz, dirs: query(params, xyz, dirs, spec), rays_o, rays_d, near, far, n_samples,
                        perturb, white_bkgd, generator, jitter)


def render_views(params: Mapping[str, torch.Tensor], spec: NerfSpec, poses: torch.Tensor, height: int, width: int,
                 focal: torch.Tensor | float, near: float = 2.0, far: float = 6.0, n_samples: int = 64,
                 chunk_rays: int = 4096) -> torch.Tensor:
    """Render V views of each of B NeRFs (``poses`` ``[B, V, 4, 4]``, ``focal`` scalar or ``[B]``) → ``[B, V, H, W, 3]``."""
    batch, n_views = poses.shape[:2]
    focal_t = torch.as_tensor(focal, device=poses.device, dtype=poses.dtype).reshape(-1).expand(batch)
    j, i = torch.meshgrid(torch.arange(height, device=poses.device), torch.arange(width, device=poses.device),
                          indexing="ij")
    pix = torch.stack([i, j], dim=-1).reshape(1, 1, -1, 2).expand(batch, n_views, -1, 2)
    c2w = poses.unsqueeze(2).expand(batch, n_views, height * width, 4, 4)
    rays_o, rays_d = pixel_rays(pix, focal_t.view(batch, 1, 1), height, width, c2w)
    rays_o, rays_d = rays_o.reshape(batch, -1, 3), rays_d.reshape(batch, -1, 3)
    out = []
    with torch.no_grad():
        for start in range(0, rays_o.shape[1], chunk_rays):
            sl = slice(start, start + chunk_rays)
            out.append(render_rays(params, spec, rays_o[:, sl], rays_d[:, sl], near, far, n_samples)["rgb"])
    return torch.cat(out, dim=1).view(batch, n_views, height, width, 3)


def render_image(params_one_scene: Mapping[str, torch.Tensor], spec: NerfSpec, pose: torch.Tensor, height: int,
                 width: int, focal: float, near: float = 2.0, far: float = 6.0, n_samples: int = 64,
                 chunk_rays: int = 4096) -> torch.Tensor:
    """Render one NeRF (per-scene or ``[1, ...]`` params) from any camera-to-world ``pose`` → ``[H, W, 3]`` in [0, 1]."""
    params = batch_params(params_one_scene, spec)
    pose = torch.as_tensor(pose, dtype=torch.float32, device=params["layer0.weight"].device)
    return render_views(params, spec, pose.view(1, 1, 4, 4), height, width, focal, near, far, n_samples,
                        chunk_rays)[0, 0]


def grid_points(resolution: int = 32, bound: float = DEFAULT_GRID_BOUND,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """``[R, R, R, 3]`` cell-centre points of the cube ``[-bound, bound]^3``, axes ordered (x, y, z) (``indexing='ij'``)."""
    axis = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution * 2 * bound - bound
    gx, gy, gz = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([gx, gy, gz], dim=-1)


def query_grid(params: Mapping[str, torch.Tensor], spec: NerfSpec, resolution: int = 32,
               bound: float = DEFAULT_GRID_BOUND, view_dir: tuple[float, float, float] = (0.0, 0.0, -1.0),
               chunk_points: int = 65536) -> torch.Tensor:
    """RGB + density of B NeRFs on an ``R³`` grid → ``[B, 4, R, R, R]`` (channels r, g, b, σ; spatial dims x, y, z).

    Colour depends on the viewing direction; the grid uses one fixed ``view_dir`` (default looking down −z,
    i.e. from above in the Blender convention) so every scene is queried the same way.
    """
    params = dict(params)
    device = params["layer0.weight"].device
    batch = params["layer0.weight"].shape[0]
    pts = grid_points(resolution, bound, device).reshape(1, -1, 3).expand(batch, -1, 3)
    dirs = torch.tensor(view_dir, device=device, dtype=torch.float32).expand_as(pts)
    rgbs, sigmas = [], []
    with torch.no_grad():
        for start in range(0, pts.shape[1], chunk_points):
            rgb, sigma = query(params, pts[:, start:start + chunk_points], dirs[:, start:start + chunk_points], spec)
            rgbs.append(rgb)
            sigmas.append(sigma)
    vol = torch.cat([torch.cat(rgbs, dim=1), torch.cat(sigmas, dim=1).unsqueeze(-1)], dim=-1)  # [B, R³, 4]
    return vol.transpose(1, 2).reshape(batch, 4, resolution, resolution, resolution)
