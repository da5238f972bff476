"""vdiff/models."""
