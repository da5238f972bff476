"""vdiff/parallel."""
