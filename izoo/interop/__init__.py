"""Interoperability: read the paper's released INRs (``implicit_zoo``) and write the formats that weight-space
learning code reads (``export``: per-item state-dict folders, fit-a-nef HDF5). ``izoo import`` / ``izoo export``
are registered by ``izoo.interop.commands``."""
