"""vdiff/data."""
