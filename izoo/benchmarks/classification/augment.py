"""Differentiable RandAugment for INRs: geometric ops in weight space, colour ops on the queried RGB.

Geometric ops (rotate, shear X/Y, translate X/Y) move image content by ``x' = A x + t`` in the
(-1, 1) coordinate frame. They are applied to the INR itself by changing only its first layer,
``(W, b) → (W A⁻¹, b − W A⁻¹ t)``, so that ``W' x' + b' = W x + b``: the transformed INR at ``x'``
equals the original at ``x``, and everything stays differentiable in the query coordinates.
A binary mask gets the same transform (1 where the source point ``A⁻¹(x' − t)`` lies inside (-1, 1)²,
0 outside: zero padding). Cutout zeroes a square of that mask; it is not an affine change of
coordinates, so it is the one geometric op that lives only in the mask.

Colour ops run on the masked, de-normalised [0, 1] RGB with kornia: autocontrast, equalize, solarize,
colour balance, invert, contrast, brightness, sharpness, posterize. Equalize and posterize are not
differentiable; they enter as the residual ``v + (T(v) − v).detach()`` so gradients flow through
unchanged. The other colour ops are differentiable and keep their gradients, as in the paper.

Sampling follows RandAugment (N ops per item, one magnitude M on timm's 0..10 scale); each item
of a batch draws its own ops, signs and cutout positions from the given generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia.enhance as ke
import torch

from izoo.siren import model as siren

GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y", "cutout")
COLOUR_OPS = ("autocontrast", "equalize", "solarize", "colour_balance", "invert", "contrast", "brightness",
              "sharpness", "posterize")
#: the 15 differentiable transforms of the paper (its Fig. 5), in sampling order
OPS = GEOMETRIC_OPS + COLOUR_OPS
#: RandAugment's magnitude scale (timm's _LEVEL_DENOM)
MAX_MAGNITUDE = 10.0


def rotation_matrix(angle_rad: torch.Tensor) -> torch.Tensor:
    """``[B, 2, 2]`` rotation by ``angle_rad`` ``[B]``; positive angles turn content counter-clockwise on screen.

    Screen y points down, so a counter-clockwise turn on screen is ``[[cos, sin], [−sin, cos]]``
    in (x, y) — the same sense as ``kornia.geometry.transform.rotate``.
    """
    cos, sin = torch.cos(angle_rad), torch.sin(angle_rad)
    return torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)


def shear_matrix(shear: torch.Tensor, axis: str) -> torch.Tensor:
    """``[B, 2, 2]`` shear along x (``x' = x + s y``) or y (``y' = y + s x``)."""
    mat = torch.eye(2, dtype=shear.dtype, device=shear.device).repeat(shear.shape[0], 1, 1)
    if axis == "x":
        mat[:, 0, 1] = shear
    else:
        mat[:, 1, 0] = shear
    return mat


def transform_first_layer(params: siren.Params, matrix: torch.Tensor, shift: torch.Tensor) -> siren.Params:
    """Move each INR's content by ``x' = A x + t`` (``A`` ``[B, 2, 2]``, ``t`` ``[B, 2]``) through its first layer only."""
    weight, bias = params[0], params[1]
    inv = torch.linalg.inv(matrix.to(weight.dtype))
    new_weight = weight @ inv                                                   # W A⁻¹
    new_bias = bias - (new_weight @ shift.to(weight.dtype).unsqueeze(-1)).squeeze(-1)  # b − W A⁻¹ t
    return [new_weight, new_bias] + list(params[2:])


def inside_mask(coords: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``[B, P]`` binary mask: 1 where the source ``A⁻¹(x' − t)`` of query ``x'`` (``coords`` ``[P, 2]``) lies in [-1, 1]²."""
    inv = torch.linalg.inv(matrix)
    source = torch.einsum("bij,bpj->bpi", inv, coords.unsqueeze(0) - shift.unsqueeze(1))
    return (source.abs() <= 1.0).all(-1).to(coords.dtype)


def _residual(value: torch.Tensor, transformed: torch.Tensor) -> torch.Tensor:
    """``v + (T(v) − v).detach()``: the value of ``T(v)`` with the gradient of the identity."""
    return value + (transformed - value).detach()


@dataclass
class AugmentPlan:
    """What RandAugment drew for one batch: op ids ``[B, N]``, signs ``[B, N]`` (±1), cutout centres ``[B, N, 2]``."""

    ops: torch.Tensor
    signs: torch.Tensor
    cutout_centres: torch.Tensor


class RandAugmentINR:
    """RandAugment over a batch of SIRENs: ``geometric`` before querying, ``colour`` on the queried RGB."""

    def __init__(self, n_ops: int = 2, magnitude: float = 9.0, ops: tuple[str, ...] = OPS):
        unknown = [op for op in ops if op not in OPS]
        if unknown:
            raise ValueError(f"unknown augmentation ops {unknown}; choose from {', '.join(OPS)}")
        if not 0 <= magnitude <= MAX_MAGNITUDE:
            raise ValueError(f"augmentation magnitude must be in [0, {MAX_MAGNITUDE:g}] (got {magnitude})")
        self.n_ops, self.magnitude, self.ops = int(n_ops), float(magnitude), tuple(ops)
        level = self.magnitude / MAX_MAGNITUDE
        # timm's RandAugment level→argument maps, with image-size fractions turned into (-1, 1) units
        self.rotate_rad = math.radians(30.0 * level)
        self.shear = 0.3 * level
        self.translate = 2.0 * 0.45 * level
        self.cutout_side = 2.0 * 0.6 * level     # RandAugment's cutout: up to 60 % of the image side
        self.solarize_threshold = 1.0 - level
        self.posterize_bits = 4 + int(4 * level)
        self.enhance = 0.9 * level               # colour/contrast/brightness/sharpness factor 1 ± this

    def sample(self, batch: int, generator: torch.Generator | None = None) -> AugmentPlan:
        """Draw N ops per item (uniformly, with replacement), their signs and cutout centres (on the CPU)."""
        op_ids = torch.tensor([OPS.index(op) for op in self.ops])
        picks = torch.randint(len(self.ops), (batch, self.n_ops), generator=generator)
        signs = torch.randint(2, (batch, self.n_ops), generator=generator).float() * 2 - 1
        centres = torch.rand(batch, self.n_ops, 2, generator=generator) * 2 - 1
        return AugmentPlan(ops=op_ids[picks], signs=signs, cutout_centres=centres)

    def affine(self, plan: AugmentPlan, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Compose the plan's geometric ops, in order, into ``x' = A x + t``: ``A`` ``[B, 2, 2]``, ``t`` ``[B, 2]``."""
        batch = plan.ops.shape[0]
        matrix = torch.eye(2).repeat(batch, 1, 1)
        shift = torch.zeros(batch, 2)
        for k in range(plan.ops.shape[1]):
            op_matrix = torch.eye(2).repeat(batch, 1, 1)
            op_shift = torch.zeros(batch, 2)
            sign, ops = plan.signs[:, k], plan.ops[:, k]
            rot = ops == OPS.index("rotate")
            op_matrix[rot] = rotation_matrix(sign[rot] * self.rotate_rad)
            for axis in ("x", "y"):
                sheared = ops == OPS.index(f"shear_{axis}")
                op_matrix[sheared] = shear_matrix(sign[sheared] * self.shear, axis)
            for dim, axis in enumerate(("x", "y")):
                moved = ops == OPS.index(f"translate_{axis}")
                op_shift[moved, dim] = sign[moved] * self.translate
            matrix = op_matrix @ matrix
            shift = (op_matrix @ shift.unsqueeze(-1)).squeeze(-1) + op_shift
        return matrix.to(device), shift.to(device)

    def geometric(self, params: siren.Params, coords: torch.Tensor,
                  plan: AugmentPlan) -> tuple[siren.Params, torch.Tensor]:
        """Apply the plan's geometric ops to the INRs; also return the ``[B, P]`` in-range-and-not-cut-out mask at ``coords``."""
        matrix, shift = self.affine(plan, device=coords.device)
        params = transform_first_layer(params, matrix, shift)
        mask = inside_mask(coords.detach(), matrix, shift)
        half = self.cutout_side / 2
        for k in range(plan.ops.shape[1]):
            cut = (plan.ops[:, k] == OPS.index("cutout")).to(coords.device)
            centre = plan.cutout_centres[:, k].to(coords.device)
            inside_box = ((coords.detach().unsqueeze(0) - centre.unsqueeze(1)).abs() < half).all(-1)
            mask = mask * ~(inside_box & cut.unsqueeze(1))
        return params, mask

    def colour(self, images01: torch.Tensor, plan: AugmentPlan) -> torch.Tensor:
        """Apply the plan's colour ops, in order, to ``[B, 3, H, W]`` RGB in [0, 1] (each item its own ops)."""
        out = images01
        for k in range(plan.ops.shape[1]):
            ops = plan.ops[:, k].to(out.device)
            factors = 1.0 + plan.signs[:, k].to(out.device, out.dtype) * self.enhance
            for name in COLOUR_OPS:
                rows = (ops == OPS.index(name)).nonzero().squeeze(1)
                if rows.numel():
                    out = out.index_put((rows,), self._colour_op(name, out[rows], factors[rows]))
        return out

    def _colour_op(self, name: str, image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """One colour op on a sub-batch ``[b, 3, H, W]`` with per-item enhancement factors ``[b]``."""
        if name == "autocontrast":
            return ke.normalize_min_max(image)
        if name == "equalize":
            with torch.no_grad():
                target = ke.equalize(image.clamp(0, 1))
            return _residual(image, target)
        if name == "posterize":
            with torch.no_grad():
                target = ke.posterize(image.clamp(0, 1), self.posterize_bits)
            return _residual(image, target)
        if name == "solarize":
            return ke.solarize(image, self.solarize_threshold)
        if name == "invert":
            return ke.invert(image, torch.ones((), device=image.device, dtype=image.dtype))
        if name == "colour_balance":
            # PIL's ImageEnhance.Color: blend with the greyscale image
            return ke.adjust_saturation_with_gray_subtraction(image, factor)
        if name == "contrast":
            # PIL's ImageEnhance.Contrast: blend with the mean grey
            return ke.adjust_contrast_with_mean_subtraction(image, factor)
        if name == "brightness":
            # PIL's ImageEnhance.Brightness blends with black, i.e. multiplies; kornia's adjust_contrast is that product
            return ke.adjust_contrast(image, factor)
        if name == "sharpness":
            return ke.sharpness(image, factor)
        raise ValueError(f"unknown colour op {name!r}")

    def __repr__(self) -> str:
        return f"RandAugmentINR(n_ops={self.n_ops}, magnitude={self.magnitude:g}, ops={len(self.ops)})"


def query_augmented(params: siren.Params, coords: torch.Tensor, w0: float, height: int, width: int,
                    augment: RandAugmentINR | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Query INRs at ``coords`` ``[H*W, 2]`` with optional RandAugment → ``[B, 3, H, W]`` ImageNet-normalised RGB."""
    plan = None
    mask = None
    if augment is not None and augment.n_ops > 0:
        plan = augment.sample(params[0].shape[0], generator)
        params, mask = augment.geometric(params, coords, plan)
    rgb = siren.forward(params, coords, w0)                                     # [B, P, 3], normalised
    if plan is None:
        return rgb.transpose(1, 2).reshape(rgb.shape[0], 3, height, width)
    images01 = siren.denormalise_rgb(rgb) * mask.unsqueeze(-1)
    images01 = images01.transpose(1, 2).reshape(rgb.shape[0], 3, height, width)
    return siren.normalise(augment.colour(images01, plan))
