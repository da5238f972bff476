"""vdiff/diffusion."""
