"""Benchmarks on INR archives: classification (learnable tokenizers, differentiable augmentation), segmentation, pose."""
