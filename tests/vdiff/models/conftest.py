"""Shared fixtures for model tests: a tiny VideoDiT with every weight random, and inputs for it."""

from __future__ import annotations

import pytest
import torch

from vdiff.models import ModelConfig, VideoDiT, build_model


def _randomize(model: torch.nn.Module, *, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (Wan's init zeroes the output projection)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def _make_inputs(
    *,
    batch: int = 2,
    channels: int = 4,
    frames: int = 3,
    height: int = 6,
    width: int = 10,
    text_len: int = 5,
    text_dim: int = 32,
    seed: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents (B, C, T, H, W), timesteps (B,) in [0, 1000), text embeddings (B, L, text_dim)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, frames, height, width, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    c = torch.randn(batch, text_len, text_dim, generator=g)
    return x, t, c


@pytest.fixture
def randomize():
    """``randomize(model, std=, seed=)``: every parameter drawn from N(0, std^2)."""
    return _randomize


@pytest.fixture
def make_inputs():
    """``make_inputs(batch=, frames=, height=, width=, ...)`` -> (x, t, context)."""
    return _make_inputs


# NOTE: diffusers-style tiny init dict (the same sizes as videodit_tiny()).
INIT_DICT = dict(
    in_channels=4,
    out_channels=4,
    num_heads=2,
    head_dim=16,
    ffn_dim=64,
    num_layers=2,
    text_dim=32,
    freq_dim=32,
)


@pytest.fixture
def tiny() -> VideoDiT:
    """A VideoDiT built from INIT_DICT with all weights random, in eval mode."""
    return _randomize(build_model(ModelConfig(**INIT_DICT))).eval()


@pytest.fixture
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Non-trivial inputs for the tiny model: 3 frames, non-square 6x10 latents."""
    return _make_inputs()
