"""Batched INR fitting with three quality-control phases, resumable per shard (see docs/DESIGN.md).

Generic machinery only: the family registry (``families``), continuous batching (``stream``), one batch of
samples in streams (``batch``), phases, shards, refinement plans. The model families live in ``izoo.siren`` and
``izoo.nerf``.
"""
