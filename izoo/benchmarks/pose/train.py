"""One pose run: render view banks, (MAE-pre-train and) train the regressor on seen scenes, evaluate seen and
unseen scenes (optionally refined), and return the result record."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from izoo.archive.reader import InrArchive, open_archive
from izoo.benchmarks.engine import count_params, seed_everything, train_step
from izoo.benchmarks.pose.data import ViewBank, as_float, nerf_params, read_kept, render_bank, split_scenes
from izoo.benchmarks.pose.geometry import camera_translation, compose_c2w, constant_pose, pose_errors, summarise_errors
from izoo.benchmarks.pose.model import PoseRegressor, VolumeMAE
from izoo.benchmarks.pose.refine import RefineSettings, refine_pose
from izoo.benchmarks.pose.settings import DISPLAY_NAMES, PoseSettings
from izoo.devices import resolve_device
from izoo.errors import IzooError
from izoo.nerf.model import NerfSpec

log = logging.getLogger(__name__)


def _optimizer(model: PoseRegressor, s: PoseSettings) -> torch.optim.Optimizer:
    """AdamW groups: pretrained volume encoder at ``lr_pretrained`` (when pre-trained), coordinates at ``tokenizer_lr``."""
    coords = {id(p) for p in model.tokenizer.coordinate_parameters()}
    encoder = {id(p) for m in model.volume_encoder_modules() for p in m.parameters()} | {id(model.volume_pos)}
    groups = {"coords": [], "encoder": [], "rest": []}
    for p in model.parameters():
        key = "coords" if id(p) in coords else "encoder" if id(p) in encoder else "rest"
        groups[key].append(p)
    spec = [{"params": groups["rest"], "lr": s.lr},
            {"params": groups["encoder"], "lr": s.lr_pretrained if s.pretrain else s.lr}]
    if groups["coords"]:
        spec.append({"params": groups["coords"], "lr": s.tokenizer_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(spec, weight_decay=s.weight_decay)


def pretrain_mae(model: PoseRegressor, arch: InrArchive, spec: NerfSpec, rows: Sequence[int], s: PoseSettings,
                 seed: int, device: torch.device) -> list[float]:
    """MAE pre-training of the volume encoder on the training scenes; returns the loss per epoch."""
    mae = VolumeMAE(model, s).to(device)
    # the query coordinates stay frozen (the targets are read at them); unused pose-head parts get no gradient
    coords = {id(p) for p in model.tokenizer.coordinate_parameters()}
    params = [p for p in mae.parameters() if id(p) not in coords]
    optimiser = torch.optim.AdamW(params, lr=s.mae_lr, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    for epoch in range(s.mae_epochs):
        order = torch.randperm(len(rows), generator=gen).tolist()
        epoch_loss = []
        for start in range(0, len(order), s.scenes_per_batch):
            batch_rows = [rows[i] for i in order[start:start + s.scenes_per_batch]]
            loss = mae(nerf_params(arch, sorted(batch_rows), device), spec, gen)
            train_step(optimiser, loss)
            epoch_loss.append(float(loss.detach()))
        losses.append(float(np.mean(epoch_loss)))
        if s.log_every and (epoch + 1) % s.log_every == 0:
            log.info("MAE epoch %d/%d loss %.5f", epoch + 1, s.mae_epochs, losses[-1])
    return losses


def _predict(model: PoseRegressor, arch: InrArchive, spec: NerfSpec, bank: ViewBank, s: PoseSettings,
             device: torch.device) -> torch.Tensor:
    """Predicted camera-to-world poses ``[S, V, 4, 4]`` for every view of a bank."""
    model.eval()
    out = []
    with torch.no_grad():
        for k, row in enumerate(bank.rows):
            rot, t_cam = model(nerf_params(arch, [row], device), spec, as_float(bank.images[k:k + 1], device))
            out.append(compose_c2w(rot[0], t_cam[0]).cpu())
    model.train()
    return torch.stack(out)


def _refine_bank(arch: InrArchive, spec: NerfSpec, bank: ViewBank, pred: torch.Tensor, s: PoseSettings,
                 seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """iNeRF-refine up to ``refine_max_views`` predictions; returns refined poses, their ground truth, loss stats."""
    rs = RefineSettings(steps=s.refine_steps, lr=s.refine_lr, n_rays=s.refine_rays, near=s.near, far=s.far,
                        n_samples=s.render_samples)
    refined, gts, first, last = [], [], [], []
    pairs = [(k, v) for k in range(len(bank.rows)) for v in range(bank.poses.shape[1])][:s.refine_max_views]
    for k, v in pairs:
        nerf = nerf_params(arch, [bank.rows[k]], device)
        target = as_float(bank.images[k, v].permute(1, 2, 0), device)
        pose, losses = refine_pose(nerf, spec, target, pred[k, v].to(device), float(bank.focal[k]), rs,
                                   seed=seed + k * 1000 + v)
        refined.append(pose.cpu())
        gts.append(bank.poses[k, v])
        if losses:
            first.append(losses[0])
            last.append(losses[-1])
    stats = {"refined_views": len(refined), "photometric_first": float(np.mean(first)) if first else math.nan,
             "photometric_last": float(np.mean(last)) if last else math.nan}
    return torch.stack(refined), torch.stack(gts), stats


def train_pose(archive_path: str | Path, kept_path: str | Path | None, seed: int = 0,
               settings: PoseSettings | None = None) -> dict[str, Any]:
    """Train the pose regressor on seen scenes, evaluate on seen and unseen scenes; returns the result record."""
    s = settings or PoseSettings()
    s.validate()
    device = resolve_device(s.device)
    seed_everything(seed)
    arch = open_archive(archive_path)
    if arch.model_family != "nerf":
        raise IzooError(f"archive holds {arch.model_family} INRs, not NeRFs", arch.path,
                        "pass the OmniObject3D NeRF archive (results/omni/archive/all.h5)")
    spec = NerfSpec.from_dict(arch.attrs.get("architecture") or {})
    rendering = arch.attrs.get("rendering") or {}
    if s.use_archive_rendering and rendering:  # render views as the NeRFs were fitted
        s.near, s.far = float(rendering.get("near", s.near)), float(rendering.get("far", s.far))
    kept = read_kept(kept_path, arch)
    seen, unseen = split_scenes(kept, s.unseen_fraction, seed)
    if not seen:
        raise IzooError("no scenes to train on", kept_path, "keep more scenes (check the scene filter report)")
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    train_bank = render_bank(arch, spec, seen, s.bank_views, s, gen, device, use_stored=False)
    eval_gen = torch.Generator().manual_seed(seed + 7919)  # a different pose stream: seen-scene test poses are new
    seen_bank = render_bank(arch, spec, seen, s.eval_views, s, eval_gen, device, use_stored=True)
    unseen_bank = render_bank(arch, spec, unseen, s.eval_views, s, eval_gen, device, use_stored=True) \
        if unseen else None
    render_seconds = time.time() - start

    model = PoseRegressor(s).to(device)
    mae_losses = pretrain_mae(model, arch, spec, seen, s, seed, device) if s.pretrain else []
    optimiser = _optimizer(model, s)
    steps_per_epoch = math.ceil(len(seen) / s.scenes_per_batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, s.epochs * steps_per_epoch))
    losses = []
    train_start = time.time()
    for epoch in range(s.epochs):
        order = torch.randperm(len(seen), generator=gen).tolist()
        epoch_loss = []
        for b in range(0, len(order), s.scenes_per_batch):
            idx = sorted(order[b:b + s.scenes_per_batch])
            views = torch.stack([torch.randperm(s.bank_views, generator=gen)[:s.views_per_scene] for _ in idx])
            images = as_float(torch.stack([train_bank.images[i, v] for i, v in zip(idx, views)]), device)
            poses = torch.stack([train_bank.poses[i, v] for i, v in zip(idx, views)]).to(device)
            rot, t_cam = model(nerf_params(arch, [seen[i] for i in idx], device), spec, images)
            rot_loss = (rot - poses[..., :3, :3]).pow(2).sum((-1, -2)).mean()
            trans_loss = ((t_cam - camera_translation(poses)) / s.camera_radius).pow(2).sum(-1).mean()
            loss = s.rotation_weight * rot_loss + s.translation_weight * trans_loss
            train_step(optimiser, loss, schedule, model.tokenizer.penalty(), s.reg_weight)
            epoch_loss.append(float(loss.detach()))
        losses.append(float(np.mean(epoch_loss)))
        if s.log_every and (epoch + 1) % s.log_every == 0:
            log.info("epoch %d/%d loss %.4f", epoch + 1, s.epochs, losses[-1])
    train_seconds = time.time() - train_start

    results: dict[str, Any] = {}
    # what no learning scores on the same views: one constant pose chosen on the training poses
    reference: dict[str, Any] = {"rule": "one constant pose: the best training rotation, the mean translation"}
    still = constant_pose(train_bank.poses)
    for split, bank in (("seen", seen_bank), ("unseen", unseen_bank)):
        if bank is None:
            results[split] = reference[split] = None
            continue
        reference[split] = summarise_errors(*pose_errors(still.expand_as(bank.poses), bank.poses))
        pred = _predict(model, arch, spec, bank, s, device)
        te, re = pose_errors(pred, bank.poses)
        results[split] = summarise_errors(te, re)
        te_cam = (camera_translation(pred) - camera_translation(bank.poses)).norm(dim=-1)
        results[split]["te_cam_mean"] = float(te_cam.mean() * 100)
        if s.refine:
            refined, gts, stats = _refine_bank(arch, spec, bank, pred, s, seed, device)
            te_r, re_r = pose_errors(refined, gts)
            te_c, re_c = pose_errors(pred.reshape(-1, 4, 4)[:len(gts)], gts)
            results[split]["refined"] = {**summarise_errors(te_r, re_r), **stats,
                                         "re_mean_before": float(re_c.mean()), "te_mean_before": float(te_c.mean() * 100)}
    labels = dict(zip(kept["row"], kept["label"]))
    return {
        "task": "pose",
        "tokenizer": s.tokenizer,
        "method": DISPLAY_NAMES[s.tokenizer].replace("Ours", "Ours+Pre" if s.pretrain else "Ours", 1),
        "pretrain": s.pretrain,
        "refine": s.refine,
        "seed": seed,
        "settings": dataclasses.asdict(s),
        "archive": str(archive_path),
        "kept": None if kept_path is None else str(kept_path),
        "split": {"seen_scenes": len(seen), "unseen_scenes": len(unseen),
                  "unseen_item_ids": [str(arch.items["item_id"].iloc[r]) for r in unseen],
                  "classes": int(kept["label"].nunique()),
                  "rule": f"per class, {s.unseen_fraction:.0%} of scenes held out (>= 1 when the class has >= 2); "
                          "seen = new poses of training scenes", "unseen_labels": [int(labels[r]) for r in unseen]},
        "params": count_params(model),
        "seen": results["seen"],
        "unseen": results["unseen"],
        "reference": reference,
        "train_loss": losses,
        "mae_loss": mae_losses,
        "render_seconds": render_seconds,
        "train_seconds": train_seconds,
        "te_unit": "scene units x 100 (cm when one unit is a metre)",
        "device": str(device),
    }
