"""Recorded activations of a small VideoDiT whose attention is local, made in seconds (issue 15).

A tiny VideoDiT (dim 128, 2 heads of 64, 2 layers) takes :data:`STEPS` Adam steps on an
objective that makes its attention non-uniform: every self-attention's softmax is pulled
towards a Gaussian neighbourhood in (t, y, x) of a per-layer, per-head width (cross-entropy).
That is the structure a trained video DiT has (attention local in space and time), reached
in a fraction of the steps flow-matching training needs on a CPU. The model then samples from
noise (Euler, 5 steps) under :class:`~vdiff.attention.record.ActivationRecorder`, which records
q, k, v as a sparse backend would receive them (after QK-norm and RoPE, in the model's order).
bench/attention_activations.py trains models with the real flow-matching loss instead.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from vdiff.attention import AttentionConfig
from vdiff.attention.record import ActivationRecorder, Recording
from vdiff.models import build_model
from vdiff.models.config import ModelConfig

GRID = (2, 32, 32)
"""(T, H, W) latent grid, patch 1: 2048 tokens"""
STEPS = 15
WIDTHS = ((0.7, 1.2), (1.0, 1.8))
"""per layer, per head: the width (tokens) of the Gaussian neighbourhood attention is pulled to"""
SAMPLE_STEPS = 5


def _target(grid: tuple[int, int, int], width: float) -> torch.Tensor:
    """(N, N) row-stochastic Gaussian neighbourhood of each token in (t, y, x), raster order."""
    t, h, w = grid
    pos = (
        torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), dim=-1)
        .reshape(-1, 3)
        .float()
    )  # (N, 3)
    d2 = torch.cdist(pos, pos).square()
    return torch.softmax(-d2 / (2 * width**2), dim=-1)


def _model() -> Any:
    cfg = ModelConfig(
        in_channels=4,
        out_channels=4,
        patch_size=(1, 1, 1),
        num_heads=2,
        head_dim=64,
        ffn_dim=128,
        num_layers=2,
        text_dim=32,
        freq_dim=32,
        rope_theta=10.0,
        rope_max_seq_len=64,
        abs_pos_embed=True,
    )
    torch.manual_seed(0)
    return build_model(cfg)


def _context() -> torch.Tensor:
    return torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(3))


@functools.cache
def local_attention_model() -> Any:
    """The tiny VideoDiT after :data:`STEPS` steps of the locality objective (cached per session)."""
    model = _model()
    targets = [torch.stack([_target(GRID, w) for w in ws]) for ws in WIDTHS]  # per layer (H, N, N)
    logits: dict[int, torch.Tensor] = {}

    def op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer: int) -> torch.Tensor:
        logits[layer] = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, N, N)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    for m in model.self_attentions():
        m.attn_op = functools.partial(op, layer=m.layer_index)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(0)
    # NOTE: the first caller may run under no_grad (recorded()); training needs gradients.
    with torch.enable_grad():
        for _ in range(STEPS):
            x = torch.randn(1, 4, *GRID, generator=g)
            sigma = torch.rand(1, generator=g) * 1000
            model(x, sigma, _context())
            loss = sum(
                -(targets[li] * torch.log_softmax(s, dim=-1)).sum(-1).mean() for li, s in logits.items()
            )
            opt.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            opt.step()
    model.set_attention(AttentionConfig(backend="sdpa", token_order="raster"))
    return model.eval()


@torch.no_grad()
def recorded(seeds: tuple[int, ...] = (0,), *, order: str = "raster") -> list[Recording]:
    """q, k, v of every layer at every step of Euler sampling from each seed's noise, in ``order``."""
    model = local_attention_model()
    model.set_token_order(order)
    rec = ActivationRecorder(model)
    sig = torch.linspace(1.0, 0.0, SAMPLE_STEPS + 1)
    try:
        for seed in seeds:
            x = torch.randn(1, 4, *GRID, generator=torch.Generator().manual_seed(seed))
            for i in range(SAMPLE_STEPS):
                rec.tag = {"seed": seed, "step": i, "sigma": float(sig[i])}
                with rec:
                    v = model(x, torch.tensor([float(sig[i]) * 1000]), _context())
                x = x + float(sig[i + 1] - sig[i]) * v
    finally:
        model.set_token_order("raster")
    return rec.records
