"""The benchmarks' code-side name registries agree with the config schema, which defines the names a config may use.

The schema says which tasks, tokenizers and pose variants a config may name; the code registers what it can run
(``results.COMMANDS``, ``tokenizers.TOKENIZERS`` and the per-task subsets, ``pose.variants.POSE_VARIANTS``). A name
in one and not the other would pass validation and fail in a cluster job, or be unreachable.
"""

from __future__ import annotations

from izoo.benchmarks.pose.settings import POSE_TOKENIZERS
from izoo.benchmarks.pose.variants import POSE_VARIANTS, TRAINING_JOBS
from izoo.benchmarks.results import REQUIRED_KEYS, TASKS
from izoo.benchmarks.segmentation.settings import SEG_TOKENIZERS
from izoo.benchmarks.tokenizers import TOKENIZERS
from izoo.config import schema_names


def test_task_and_variant_registries_match_the_schema() -> None:
    assert list(TASKS) == list(schema_names("task")) and set(REQUIRED_KEYS) == set(TASKS)
    assert list(POSE_VARIANTS) == list(schema_names("pose_variant"))


def test_task_tokenizers_are_registered_tokenizers() -> None:
    assert set(SEG_TOKENIZERS) <= set(TOKENIZERS) and set(POSE_TOKENIZERS) <= set(TOKENIZERS)
    assert {"plain" if not pretrain else "pretrain" for pretrain, _ in POSE_VARIANTS.values()} == set(TRAINING_JOBS)
