"""vdiff/checkpoint."""
