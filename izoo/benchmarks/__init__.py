"""Benchmarks on INR archives (the paper's Tables 2, 3 and 5), laid out like MAE / timm.

Shared: ``engine`` (seeding, the optimiser step, parameter counts, the confusion matrix; devices come from
``izoo.devices``), ``results`` (the result JSON: its ``task`` key, writer and reader), ``tables`` (mean ± std cells,
markdown, the table writer), ``tokenizers`` (the 2D coordinate tokenizers). One subpackage per task:
``classification``, ``segmentation``, ``pose``. Every ``izoo bench-*`` command lives in ``commands``.
"""
