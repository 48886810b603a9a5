"""Rotations and pose errors: the 6D representation, geodesic error, camera translations, the constant-pose
baseline and the Table-5 error summary."""

from __future__ import annotations

import torch
import torch.nn.functional as F

RE_THRESHOLDS = (5.0, 15.0, 30.0)


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """``[..., 6]`` → rotation ``[..., 3, 3]`` by Gram–Schmidt; the 6 numbers are the first two columns (Zhou et al.)."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(rot: torch.Tensor) -> torch.Tensor:
    """Rotation ``[..., 3, 3]`` → its 6D representation (first two columns)."""
    return torch.cat([rot[..., :, 0], rot[..., :, 1]], dim=-1)


def geodesic_rotation_error_deg(r_pred: torch.Tensor, r_gt: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) of the relative rotation ``R_predᵀ R_gt``, ``[..., 3, 3]`` → ``[...]``; symmetric in its arguments.

    ``atan2(‖axis·sin θ‖, cos θ)`` instead of ``acos`` of the trace: accurate near 0° and 180°, where acos is not.
    """
    rel = r_pred.transpose(-1, -2).double() @ r_gt.double()
    cos = (rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    skew = torch.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0],
                        rel[..., 1, 0] - rel[..., 0, 1]], dim=-1)
    sin = skew.norm(dim=-1) / 2.0
    return torch.rad2deg(torch.atan2(sin, cos)).to(r_pred.dtype)


def camera_translation(c2w: torch.Tensor) -> torch.Tensor:
    """World-to-camera translation ``−Rᵀ c`` of camera-to-world poses ``[..., 4, 4]`` → ``[..., 3]``."""
    return -(c2w[..., :3, :3].transpose(-1, -2) @ c2w[..., :3, 3:4]).squeeze(-1)


def compose_c2w(rot: torch.Tensor, t_cam: torch.Tensor) -> torch.Tensor:
    """Camera-to-world ``[..., 4, 4]`` from a rotation and a world-to-camera translation (centre ``c = −R t``)."""
    pose = torch.zeros(*rot.shape[:-2], 4, 4, dtype=rot.dtype, device=rot.device)
    pose[..., :3, :3] = rot
    pose[..., :3, 3] = -(rot @ t_cam.unsqueeze(-1)).squeeze(-1)
    pose[..., 3, 3] = 1.0
    return pose


def mean_rotation(rots: torch.Tensor) -> torch.Tensor:
    """The chordal L2 mean of rotations ``[N, 3, 3]``: their sum projected onto SO(3) (SVD, det +1)."""
    u, _, vt = torch.linalg.svd(rots.double().sum(0))
    fix = torch.diag(torch.tensor([1.0, 1.0, float(torch.linalg.det(u @ vt))], dtype=torch.float64))
    return (u @ fix @ vt).to(rots.dtype)


def constant_pose(train_c2w: torch.Tensor, max_poses: int = 2048, seed: int = 0) -> torch.Tensor:
    """The best pose that ignores its input, chosen on training poses ``[..., 4, 4]`` only.

    The rotation is whichever of the candidates (the chordal mean, and every training rotation) has the lowest
    mean geodesic error over the training rotations: with cameras all around an object the chordal mean is close
    to degenerate, and the best single training rotation is the fairer "no learning" baseline. The translation is
    the mean world-to-camera translation. At most ``max_poses`` (a seeded sample) are compared pairwise.
    """
    flat = train_c2w.reshape(-1, 4, 4)
    if len(flat) > max_poses:
        flat = flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:max_poses]]
    rots = flat[:, :3, :3]
    candidates = torch.cat([mean_rotation(rots)[None], rots])
    errors = geodesic_rotation_error_deg(candidates[:, None], rots[None]).mean(1)
    return compose_c2w(candidates[int(errors.argmin())], camera_translation(flat).mean(0))


def pose_errors(pred_c2w: torch.Tensor, gt_c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view translation error (scene units) and rotation error (degrees) of camera-to-world poses ``[..., 4, 4]``."""
    te = (pred_c2w[..., :3, 3] - gt_c2w[..., :3, 3]).norm(dim=-1)
    re = geodesic_rotation_error_deg(pred_c2w[..., :3, :3], gt_c2w[..., :3, :3])
    return te, re


def summarise_errors(te: torch.Tensor, re: torch.Tensor, te_scale: float = 100.0) -> dict[str, float]:
    """Mean/median TE (scene units × ``te_scale``), mean/median RE (°) and RE@5/15/30 (% of views)."""
    te, re = te.double().reshape(-1) * te_scale, re.double().reshape(-1)
    out = {"n_views": int(re.numel()), "te_mean": float(te.mean()), "te_median": float(te.median()),
           "re_mean": float(re.mean()), "re_median": float(re.median())}
    for thr in RE_THRESHOLDS:
        out[f"re@{thr:g}"] = float((re < thr).double().mean() * 100)
    return out
