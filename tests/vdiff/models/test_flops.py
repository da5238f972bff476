"""The VideoDiT FLOP counter against two references: a closed form from the model's own weight
shapes, and torch.utils.flop_counter.FlopCounterMode on a real forward + backward.

FlopCounterMode counts aten's matmuls (mm, addmm, bmm, baddbmm), convolutions (forward and
backward, honouring which gradients autograd asks for) and the CUDA SDPA kernels (flash,
memory-efficient, cuDNN). It does not count CPU's ``_scaled_dot_product_flash_attention_for_cpu``
(so the test pins SDPA's math backend, which is written as bmm's), nor any elementwise op (norms,
RoPE, softmax, GELU/SiLU, modulation), which vdiff's counter leaves out by design too. With those
two conventions equal, the counts are integers that must agree exactly (tolerance 0).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vdiff.models import build_model
from vdiff.models.config import videodit_tiny_config, videodit_wan21_1_3b_config
from vdiff.models.flops import (
    PEAK_ENV,
    backward_flops,
    forward_breakdown,
    forward_flops,
    mfu,
    peak_flops,
    train_flops,
)


def odd_config():
    # NOTE: every width different, so a swapped dimension shows up in the count
    return videodit_tiny_config(
        in_channels=4,
        out_channels=6,
        num_heads=3,
        head_dim=12,
        ffn_dim=40,
        num_layers=3,
        text_dim=20,
        freq_dim=14,
    )


def count(model: nn.Module, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> tuple[int, int]:
    """(forward, backward) FLOPs FlopCounterMode sees, SDPA pinned to its math backend."""
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as fwd:
            out = model(x, t, c)
        with FlopCounterMode(display=False) as bwd:
            out.square().mean().backward()
    return fwd.get_total_flops(), bwd.get_total_flops()


@pytest.mark.parametrize(
    "cfg, latent, text_len",
    [(videodit_tiny_config(), (2, 8, 8), 5), (odd_config(), (3, 6, 10), 7)],
    ids=["tiny", "odd-widths"],
)
def test_matches_flop_counter_mode(cfg, latent, text_len):
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = 2
    x = torch.randn(batch, cfg.in_channels, *latent)  # (B, C, T, H, W)
    t = torch.rand(batch) * 1000
    c = torch.randn(batch, text_len, cfg.text_dim)  # (B, L, text_dim)
    tokens = math.prod(s // p for s, p in zip(latent, cfg.patch_size))
    fwd, bwd = count(model, x, t, c)
    assert fwd == batch * forward_flops(cfg, tokens=tokens, text_len=text_len)
    assert bwd == batch * backward_flops(cfg, tokens=tokens, text_len=text_len)
    assert fwd + bwd == batch * train_flops(cfg, tokens=tokens, text_len=text_len)


def weights_closed_form(model: nn.Module, *, tokens: int, text_len: int) -> int:
    """Forward matmul FLOPs from the weight shapes: 2 x weights x the rows each is applied to, plus
    4·N·S·dim per attention (q kᵀ and p v over all heads, S the keys' length)."""
    rows = {"time_embed": 1, "time_proj": 1, "text_embed": text_len}
    total = 0
    for name, p in model.named_parameters():
        if p.ndim < 2 or name.endswith("modulation"):
            continue  # biases, norms, modulation tables: no matmul
        where = next((n for k, n in rows.items() if f".{k}." in f".{name}"), tokens)
        if ".cross_attn.k." in name or ".cross_attn.v." in name:
            where = text_len
        total += 2 * p.numel() * where
    dim, layers = model.config.dim, model.config.num_layers
    return total + layers * (4 * tokens * tokens * dim + 4 * tokens * text_len * dim)


def test_closed_form_at_wan21_1_3b():
    cfg = videodit_wan21_1_3b_config()
    model = build_model(cfg, device="meta")
    tokens, text_len = 21 * 30 * 52, 512  # 81 frames at 480x832: 21 latent frames of 60x104 -> 32760
    assert forward_flops(cfg, tokens=tokens, text_len=text_len) == weights_closed_form(
        model, tokens=tokens, text_len=text_len
    )
    # The usual estimate, 6 x (block matmul weights) x N + 3 x attention's products, charges
    # cross-attention's k and v with N rows instead of L, and the text/time layers not at all:
    # within 4 % here, from above.
    parts = forward_breakdown(cfg, tokens=tokens, text_len=text_len)
    block_params = cfg.num_layers * (8 * cfg.dim**2 + 2 * cfg.dim * cfg.ffn_dim)
    estimate = 6 * block_params * tokens + 3 * (parts["self_attn_sdpa"] + parts["cross_attn_sdpa"])
    got = train_flops(cfg, tokens=tokens, text_len=text_len)
    assert 0 < (estimate - got) / got < 0.04


def test_peak_flops_by_name_env_and_override(monkeypatch):
    monkeypatch.delenv(PEAK_ENV, raising=False)
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA L40S") == 362e12
    assert peak_flops("NVIDIA GeForce RTX 4090") == pytest.approx(165.2e12)
    assert peak_flops("cpu") is None
    assert peak_flops("cpu", override_tflops=2.5) == 2.5e12
    monkeypatch.setenv(PEAK_ENV, "100")
    assert peak_flops("cpu") == 100e12
    assert peak_flops("NVIDIA H100 80GB HBM3", override_tflops=50) == 50e12
    monkeypatch.setenv(PEAK_ENV, "fast")
    with pytest.raises(ValueError, match=PEAK_ENV):
        peak_flops("cpu")


def test_mfu():
    assert mfu(400e12, 989e12) == pytest.approx(0.4044, abs=1e-4)
    with pytest.raises(ValueError):
        mfu(1.0, 0.0)
