"""``sage``: INT8 Q·Kᵀ attention against fp32 dense attention within its documented bounds."""

from __future__ import annotations

import math

import pytest
import torch

from vdiff.attention import attention
from vdiff.attention.metrics import attention_error, dense_reference
from vdiff.attention.quant import dequantize, int8_matmul, quantize_per_block

# Bounds documented in docs/attention.md (fp32 P·V; bf16/fp16 P·V; fp8 P·V numerics).
COS_MIN, L1_MAX = 0.999, 0.03
COS_MIN_FP8, L1_MAX_FP8 = 0.995, 0.08


def test_quantize_per_block_error_and_scales() -> None:
    x = torch.randn(1, 2, 300, 16) * torch.linspace(0.1, 10, 300).view(1, 1, 300, 1)
    xi, s = quantize_per_block(x, block=64)
    assert xi.dtype == torch.int8 and xi.shape == x.shape and s.shape == (1, 2, 5)
    per_tok = s.repeat_interleave(64, dim=-1)[..., :300, None]  # (1, 2, 300, 1)
    assert ((xi.float() * per_tok - x).abs() <= per_tok / 2 + 1e-6).all()
    block_max = xi[:, :, :256].reshape(1, 2, 4, 64, 16).abs().amax(dim=(-1, -2))  # (1, 2, 4) full blocks
    assert int(block_max.min()) >= 64 and int(xi.abs().max()) <= 127
    assert torch.equal(torch.log2(s), torch.log2(s).round())  # power-of-two scales


def test_quantize_per_block_scale_follows_the_largest_magnitude_of_either_sign() -> None:
    x = torch.rand(1, 1, 128, 8)  # (1, 1, 128, 8): all positive, < 1
    x[0, 0, 10, 3] = -50.0  # block 0's largest magnitude is negative
    x[0, 0, 70, 1] = 30.0  # block 1's is positive
    xi, s = quantize_per_block(x, block=64)
    assert s[0, 0].tolist() == [2.0 ** math.ceil(math.log2(50 / 127)), 2.0 ** math.ceil(math.log2(30 / 127))]
    assert int(xi[0, 0, 10, 3]) == round(-50 / float(s[0, 0, 0])) and int(xi[0, 0, 70, 1]) == round(
        30 / float(s[0, 0, 1])
    )


def test_int8_matmul_is_exact() -> None:
    a = torch.randint(-127, 128, (40, 64), dtype=torch.int8)
    b = torch.randint(-127, 128, (64, 24), dtype=torch.int8)
    assert torch.equal(int8_matmul(a, b), a.long().matmul(b.long()).int())


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sage_matches_dense_on_random_inputs(head_dim: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(head_dim)
    q, k, v = (torch.randn(1, 2, 300, head_dim, generator=g).to(dtype) for _ in range(3))
    out = attention(q, k, v, backend="sage")
    assert out.dtype == dtype and out.shape == q.shape
    err = attention_error(out, dense_reference(q, k, v))
    assert err.cos_sim >= COS_MIN and err.rel_l1 <= L1_MAX, err


@pytest.mark.parametrize("kernel", ["fused", "tiled"])
@pytest.mark.parametrize("pv_dtype", ["fp32", "bf16", "fp16"])
def test_sage_matches_dense_on_video_inputs(video_qkv, pv_dtype: str, kernel: str) -> None:
    q, k, v = video_qkv
    out = attention(q, k, v, backend="sage", pv_dtype=pv_dtype, kernel=kernel)
    err = attention_error(out, dense_reference(q, k, v))
    assert err.cos_sim >= COS_MIN and err.rel_l1 <= L1_MAX, err


def test_sage_fp8_pv_numerics(video_qkv) -> None:
    q, k, v = video_qkv
    err = attention_error(attention(q, k, v, backend="sage", pv_dtype="fp8"), dense_reference(q, k, v))
    assert err.cos_sim >= COS_MIN_FP8 and err.rel_l1 <= L1_MAX_FP8, err


def test_k_smoothing_helps_when_k_has_a_large_mean() -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 256, 64, generator=g) for _ in range(3))
    k = k + 8.0 * torch.randn(1, 2, 1, 64, generator=g)  # channel bias shared by all tokens
    ref = dense_reference(q, k, v)
    smooth = attention_error(attention(q, k, v, backend="sage"), ref)
    raw = attention_error(attention(q, k, v, backend="sage", smooth_k=False), ref)
    assert smooth.rel_l1 < 0.5 * raw.rel_l1
    assert smooth.cos_sim >= COS_MIN


def test_sage_lse_is_that_of_the_unsmoothed_scores(video_qkv) -> None:
    q, k, v = video_qkv
    k = k + 3.0
    _, lse = attention(q, k, v, backend="sage", return_lse=True)
    _, ref_lse = attention(q, k, v, backend="sdpa", return_lse=True)
    assert lse.dtype == torch.float32
    # NOTE: INT8 score error grows with |q||k|; without the smoothing offset added back the
    # difference would be scale * q·mean(k), tens here.
    torch.testing.assert_close(lse, ref_lse, atol=0.05, rtol=0.01)


def test_sage_ring_merge_of_two_k_shards(video_qkv) -> None:
    q, k, v = video_qkv
    half = k.shape[2] // 2
    parts = [
        attention(q, k[:, :, sl], v[:, :, sl], backend="sage", return_lse=True)
        for sl in (slice(0, half), slice(half, None))
    ]
    lse = torch.logaddexp(parts[0][1], parts[1][1])  # (B, H, N)
    out = sum(o.float() * torch.exp(part_lse - lse).unsqueeze(-1) for o, part_lse in parts)
    err = attention_error(out, dense_reference(q, k, v))
    assert err.cos_sim >= COS_MIN and err.rel_l1 <= L1_MAX, err


def test_sage_clear_errors(random_qkv) -> None:
    q, k, v = random_qkv
    with pytest.raises(ValueError, match="pv_dtype"):
        attention(q, k, v, backend="sage", pv_dtype="int4")
    with pytest.raises(ValueError, match="q_block"):
        attention(q, k, v, backend="sage", q_block=0)
    with pytest.raises(ValueError, match="must agree"):
        attention(q, k[:, :1], v[:, :1], backend="sage")
    with pytest.raises(ValueError, match="inference-only"):
        attention(q.requires_grad_(), k, v, backend="sage")
    # Regression: only q was checked, so k/v needing gradients got a silent all-zero k.grad.
    for i in (1, 2):
        leaves = [x.detach() for x in (q, k, v)]
        leaves[i].requires_grad_()
        with pytest.raises(ValueError, match="inference-only"):
            attention(*leaves, backend="sage")
    with pytest.raises(ValueError, match="dtypes"):
        attention(q.detach().double(), k.double(), v.double(), backend="sage")


@pytest.mark.parametrize("pv_dtype", ["fp32", "bf16"])
def test_fused_and_tiled_paths_agree(video_qkv, pv_dtype: str) -> None:
    # NOTE: the tiled path (torch._int_mm scores) and the fused one (SDPA on exactly dequantised
    # blocks); with power-of-two scales both compute the same scores.
    q, k, v = video_qkv
    fused = attention(q, k, v, backend="sage", pv_dtype=pv_dtype, kernel="fused")
    tiled = attention(q, k, v, backend="sage", pv_dtype=pv_dtype, kernel="tiled")
    tol = 1e-5 if pv_dtype == "fp32" else 1e-2  # bf16 P and output rounding differ by an ulp
    torch.testing.assert_close(fused, tiled, atol=tol, rtol=tol)


def test_dequantize_is_exact_in_bf16() -> None:
    x = torch.randn(1, 2, 300, 64) * 3
    xi, s = quantize_per_block(x, block=64)
    exact = xi.double() * s.double().repeat_interleave(64, dim=-1)[..., :300, None]
    assert torch.equal(dequantize(xi, s, block=64, dtype=torch.bfloat16).double(), exact)
    assert torch.equal(dequantize(xi, s, block=64, dtype=torch.float16).double(), exact)


def test_quantize_per_block_takes_strided_inputs() -> None:
    x = torch.randn(1, 300, 2, 16).transpose(
        1, 2
    )  # (1, 2, 300, 16), heads-major view of a (B, N, H, D) tensor
    assert not x.is_contiguous()
    got, want = quantize_per_block(x, block=64), quantize_per_block(x.contiguous(), block=64)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
