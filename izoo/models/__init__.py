"""INR model families (SIREN for 2D, NeRF for 3D)."""
