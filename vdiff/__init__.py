"""vdiff: a video diffusion research toolkit (library part: models, attention, parallel, diffusion, data)."""

__version__ = "0.1.0"
