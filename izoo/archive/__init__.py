"""HDF5 files of INRs: per-shard weight files written by fitting jobs, and merged per-split archives."""
