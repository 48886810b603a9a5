"""The pose benchmark's variants (the paper's Table 5 columns): which training jobs they need, cheaply importable.

A variant is a trained model (``plain`` or ``pretrain``: MAE pre-trained volume encoder) and optionally the
iNeRF-style refinement of its predictions (``refine``, ``pretrain_refine``). Refinement only post-processes the
predictions, so a refine variant adds no training job: the job of its base variant also refines, and its results
give the refine variant its own table row.
"""

from __future__ import annotations

from typing import Iterable

#: variant name -> (pre-trained volume encoder, refined predictions)
POSE_VARIANTS: dict[str, tuple[bool, bool]] = {
    "plain": (False, False),
    "refine": (False, True),
    "pretrain": (True, False),
    "pretrain_refine": (True, True),
}
#: the training jobs the variants map onto, plain first (a refine variant reuses its base variant's job)
TRAINING_JOBS = ("plain", "pretrain")


def pose_training_jobs(variants: Iterable[str]) -> dict[str, dict[str, bool]]:
    """Training job name (``plain`` / ``pretrain``) -> the ``pretrain`` / ``refine`` settings it runs with."""
    jobs: dict[str, dict[str, bool]] = {}
    for name in variants:
        if name not in POSE_VARIANTS:
            raise ValueError(f"unknown pose variant {name!r}; choose from {', '.join(POSE_VARIANTS)}")
        pretrain, refine = POSE_VARIANTS[name]
        job = jobs.setdefault(TRAINING_JOBS[int(pretrain)], {"pretrain": pretrain, "refine": False})
        job["refine"] = job["refine"] or refine
    return dict(sorted(jobs.items(), key=lambda kv: TRAINING_JOBS.index(kv[0])))
