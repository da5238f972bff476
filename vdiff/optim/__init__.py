"""vdiff/optim."""
