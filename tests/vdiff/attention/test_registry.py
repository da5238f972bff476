"""The attention registry: dispatch, constraint errors, and sdpa against closed-form references."""

from __future__ import annotations

import math

import pytest
import torch

from vdiff.attention import (
    AttentionConfig,
    attention,
    attention_op,
    available_backends,
    get_backend,
    register_backend,
)
from vdiff.config import ConfigError, load_config


@register_backend(
    "_test_limited",
    devices=("cuda",),
    dtypes=(torch.float16,),
    head_dims=(64,),
    supports_grad=False,
    supports_lse=False,
)
def _limited(q, k, v, *, scale, return_lse=False):
    """Test-only backend with every constraint set."""
    return v


@register_backend("_test_cpu_fp32_only", dtypes=(torch.float32,), head_dims=(16,), supports_grad=False)
def _cpu_fp32(q, k, v, *, scale, return_lse=False):
    """Test-only backend accepting fp32 CPU tensors with head dim 16, inference only."""
    return v


def _qkv(*, b=2, h=3, nq=5, nk=7, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=g, dtype=dtype)  # (B, H, Nq, D)
    k = torch.randn(b, h, nk, d, generator=g, dtype=dtype)  # (B, H, Nk, D)
    v = torch.randn(b, h, nk, d, generator=g, dtype=dtype)  # (B, H, Nk, D)
    return q, k, v


def _naive(q, k, v, scale):
    s = (q.double() @ k.double().transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    return torch.softmax(s, dim=-1) @ v.double(), torch.log(torch.exp(s).sum(-1))  # (B, H, Nq, D), (B, H, Nq)


def test_sdpa_is_default_and_registered():
    assert "sdpa" in available_backends()
    assert get_backend("sdpa").supports_lse and get_backend("sdpa").supports_grad


def test_unknown_backend_lists_known_ones():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"unknown attention backend 'flashy'; available: .*'sdpa'"):
        attention(q, k, v, backend="flashy")


def test_sdpa_matches_naive_softmax_attention():
    q, k, v = _qkv()
    ref, _ = _naive(q, k, v, 1 / math.sqrt(16))
    out = attention(q, k, v)
    assert out.shape == (2, 3, 5, 16) and out.dtype == torch.float32
    assert (out.double() - ref).abs().max() < 1e-6
    scaled = attention(q, k, v, scale=0.05)
    assert (scaled.double() - _naive(q, k, v, 0.05)[0]).abs().max() < 1e-6


def test_return_lse_matches_closed_form():
    q, k, v = _qkv(nq=4, nk=9)
    out, lse = attention(q, k, v, return_lse=True)
    ref_out, ref_lse = _naive(q, k, v, 1 / math.sqrt(16))
    assert lse.shape == (2, 3, 4) and lse.dtype == torch.float32
    assert (lse.double() - ref_lse).abs().max() < 1e-5
    assert (out.double() - ref_out).abs().max() < 1e-6


def test_return_lse_is_differentiable():
    q, k, v = (t.requires_grad_() for t in _qkv(d=8))
    out, lse = attention(q, k, v, return_lse=True)
    (out.sum() + lse.sum()).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v))


def test_constraint_errors_name_the_backend():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"'_test_limited' runs on \('cuda',\), not cpu"):
        attention(q, k, v, backend="_test_limited")
    with pytest.raises(ValueError, match="supports dtypes"):
        attention(*_qkv(dtype=torch.bfloat16), backend="_test_cpu_fp32_only")
    with pytest.raises(ValueError, match="supports head dims"):
        attention(*_qkv(d=8), backend="_test_cpu_fp32_only")
    with pytest.raises(ValueError, match="cannot return the log-sum-exp"):
        attention(q, k, v, backend="_test_cpu_fp32_only", return_lse=True)
    with pytest.raises(ValueError, match="inference-only"):
        attention(q.requires_grad_(), k, v, backend="_test_cpu_fp32_only")
    with pytest.raises(ValueError, match=r"expects \(B, H, N, D\)"):
        attention(q[0], k[0], v[0])
    with torch.no_grad():
        assert torch.equal(attention(q, k, v, backend="_test_cpu_fp32_only"), v)


def test_attention_config_and_op():
    cfg = AttentionConfig(backend="sdpa", per_layer={2: "_test_cpu_fp32_only"})
    cfg.validate()
    assert cfg.backend_for(0) == "sdpa" and cfg.backend_for(2) == "_test_cpu_fp32_only"
    q, k, v = _qkv()
    with torch.no_grad():
        assert torch.equal(attention_op(cfg, layer_index=2)(q, k, v), v)
        torch.testing.assert_close(attention_op(cfg, layer_index=0)(q, k, v), attention(q, k, v))
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        AttentionConfig(per_layer={1: "nope"}).validate()


def test_options_reach_only_the_backends_that_take_them():
    # A dense first layer beside sparse layers with sparsity options (this raised a TypeError).
    cfg = AttentionConfig(backend="sparse_sage", per_layer={0: "sdpa"}, options={"topk": 0.5})
    cfg.validate()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 256, 32, generator=g) for _ in range(3))
    with torch.no_grad():
        torch.testing.assert_close(attention_op(cfg, layer_index=0)(q, k, v), attention(q, k, v))
        want = attention(q, k, v, backend="sparse_sage", topk=0.5, layer_index=1)
        assert torch.equal(attention_op(cfg, layer_index=1)(q, k, v), want)
    with pytest.raises(ValueError, match=r"no backend in use .* takes the option 'topkk'"):
        AttentionConfig(backend="sparse_sage", options={"topkk": 0.5}).validate()
    with pytest.raises(ValueError, match="takes the option 'topk'"):
        AttentionConfig(backend="sdpa", options={"topk": 0.5}).validate()


def test_attention_config_from_overrides():
    cfg = load_config(AttentionConfig, overrides=["backend=sdpa", "per_layer={0: _test_cpu_fp32_only}"])
    assert cfg.per_layer == {0: "_test_cpu_fp32_only"}
    with pytest.raises(ValueError, match="unknown attention backend"):
        load_config(AttentionConfig, overrides=["backend=nope"])
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(AttentionConfig, overrides=["bakend=sdpa"])
