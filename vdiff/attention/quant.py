"""SageAttention's quantisation (Zhang et al., SageAttention, ICLR 2025) and the P·V precisions.

1. K smoothing: subtract K's mean over tokens (per batch and head). Every score of a query row
   moves by the same constant ``q·mean(k)``, so the softmax is unchanged, but K's channel
   outliers shrink and INT8 keeps more precision.
2. The softmax scale is folded into Q before quantisation.
3. Q and K are quantised to INT8 symmetrically with one scale per block of tokens (Q blocks of
   ``q_block`` rows, K blocks of ``k_block`` rows): ``scale = max|x| / 127``.
   The scales are rounded up to powers of two (costing at most one bit of range), which makes
   the dequantised values ``x_int8 · scale`` exact in bf16/fp16.
4. S = (Q_int8 · K_int8ᵀ) · s_q · s_k, exact: either an INT32 product (``torch._int_mm``), or a
   bf16/fp16 GEMM of the exactly dequantised blocks with fp32 accumulation (sums of at most
   D · 127² < 2²⁴ integers are exact in fp32) inside torch's fused SDPA kernel.
5. P·V in ``pv_dtype`` (fp16/bf16, or fp8 numerics) with fp32 accumulation.

The execution paths (:mod:`vdiff.attention.execute`) use these helpers; this module imports no
other part of the package.
"""

from __future__ import annotations

import math

import torch

from vdiff.attention.cpu import cpu_has_fast_bf16

PV_DTYPES = ("auto", "fp32", "bf16", "fp16", "fp8")
PV_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# NOTE: e4m3 has 3 mantissa bits and a largest finite value of 448; P in [0, 1] is stretched to
# that range (SageAttention2 does the same) and V gets one scale per channel.
FP8_MAX = 448.0


def resolve_pv_dtype(pv_dtype: str, *, device: torch.device, in_dtype: torch.dtype) -> str:
    """Map ``"auto"`` to a concrete P·V precision; validate the others."""
    if pv_dtype not in PV_DTYPES:
        raise ValueError(f"sage option pv_dtype must be one of {PV_DTYPES}, got {pv_dtype!r}")
    if pv_dtype != "auto":
        return pv_dtype
    if device.type == "cuda":
        return "bf16" if in_dtype == torch.bfloat16 else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def quantize_per_block(x: torch.Tensor, *, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8 with one power-of-two scale per block of ``block`` tokens.

    x (B, H, N, D) float -> (x_int8 (B, H, N, D), scales (B, H, ceil(N / block)) fp32), so that
    ``x ≈ x_int8 * scale`` of the token's block; |x_int8| <= 127 and the block's largest is >= 64.
    """
    b, h, n, d = x.shape
    nb = math.ceil(n / block)
    xf = x.float()
    if nb * block != n:
        xf = torch.nn.functional.pad(xf, (0, 0, 0, nb * block - n))
    xb = xf.reshape(b, h, nb, block * d)  # (B, H, nb, block*D); a copy only if x is strided
    # NOTE: the scale is max|x| / 127 rounded up to a power of two (at most one bit of the INT8
    # range lost). Then x_int8 * scale is exact in bf16 and fp16, so a half-precision GEMM of
    # the dequantised blocks with fp32 accumulation computes exactly the INT32 product times the
    # scales: torch's fused SDPA kernels can run the INT8 numerics (see dequantize).
    # max|x| from the extremes, without an |x| copy; one full-size temporary below, rounded in place
    # (at N = 16384 the copies cost more in page faults than in arithmetic).
    lo, hi = xb.aminmax(dim=-1)  # (B, H, nb) each
    peak = torch.maximum(hi, -lo)
    scale = torch.exp2(torch.ceil(torch.log2(peak.clamp_min(1e-30) / 127.0)))
    xi = torch.div(xb, scale[..., None]).round_().clamp_(-127, 127).to(torch.int8)
    return xi.view(b, h, nb * block, d)[:, :, :n], scale


def dequantize(xi: torch.Tensor, scale: torch.Tensor, *, block: int, dtype: torch.dtype) -> torch.Tensor:
    """x_int8 (B, H, N, D) times its per-block power-of-two scales (B, H, nb), exactly, in ``dtype``."""
    n = xi.shape[2]
    per_token = scale.repeat_interleave(block, dim=-1)[..., :n, None]  # (B, H, N, 1)
    return xi.to(dtype) * per_token.to(dtype)


def int8_matmul(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """INT32 product of int8 a (M, D) and int8 b_t (D, N).

    Uses ``torch._int_mm`` where its shape rules hold (CUDA: M > 16, D and N multiples of 8); the
    fallback multiplies the integers in fp32, which is exact while D * 127² < 2²⁴ (D <= 1040).
    """
    m, d = a.shape
    n = b_t.shape[1]
    if a.device.type == "cpu" or (m > 16 and d % 8 == 0 and n % 8 == 0):
        return torch._int_mm(a, b_t)
    return torch.matmul(a.float(), b_t.float()).round_().to(torch.int32)


def smooth_and_quantize(
    q: torch.Tensor, k: torch.Tensor, *, scale: float, q_block: int, k_block: int, smooth_k: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-3 of the recipe.

    Returns q_int8 (B, H, Nq, D), q scales (B, H, nqb), k_int8 (B, H, Nk, D), k scales (B, H, nkb)
    and the per-row score offset removed by smoothing, ``scale * q·mean(k)`` (B, H, Nq) fp32.
    """
    qs = q.float() * scale  # (B, H, Nq, D)
    kf = k.float()
    if smooth_k:
        k_mean = kf.mean(dim=2, keepdim=True)  # (B, H, 1, D)
        kf = kf - k_mean
        offset = torch.matmul(qs, k_mean.transpose(-1, -2)).squeeze(-1)  # (B, H, Nq)
    else:
        offset = torch.zeros(q.shape[:3], dtype=torch.float32, device=q.device)
    qi, q_scale = quantize_per_block(qs, block=q_block)
    ki, k_scale = quantize_per_block(kf, block=k_block)
    return qi, q_scale, ki, k_scale, offset


def prepare_v(v: torch.Tensor, *, pv_dtype: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """V blocks (B*H, nk, bk, D) in the P·V precision; for fp8 also the per-channel scales (B*H, D)."""
    if pv_dtype == "fp32":
        return v.float(), None
    if pv_dtype == "fp8":
        # NOTE: numerics of an e4m3 P·V (V per channel and head); the values stay on the fp8 grid
        # but are stored in fp32, so this mode measures accuracy, not speed.
        v_scale = v.float().abs().amax(dim=(1, 2)).clamp_min(1e-12) / FP8_MAX  # (B*H, D)
        v8 = (v.float() / v_scale[:, None, None, :]).to(torch.float8_e4m3fn).float()
        return v8, v_scale
    return v.to(PV_TORCH_DTYPES[pv_dtype]), None


def pv_batched(
    p: torch.Tensor,
    v: torch.Tensor,
    *,
    pv_dtype: str,
    v_scale: torch.Tensor | None = None,
    p_buf: torch.Tensor | None = None,
) -> torch.Tensor:
    """P (G, R, M) fp32 in [0, 1] times V (G, M, D) from :func:`prepare_v` -> (G, R, D).

    fp32 and fp8 give fp32; bf16/fp16 accumulate in fp32 inside the GEMM (oneDNN on CPU, cuBLAS
    on CUDA) and round the result to that dtype. ``p_buf``: a tensor of P's shape in the bf16/fp16
    P·V dtype to round P into (reused across calls; no autograd through it).
    """
    if pv_dtype == "fp32":
        return torch.bmm(p, v)
    if pv_dtype == "fp8":
        if v_scale is None:
            raise ValueError("pv_batched: fp8 needs the V scales from prepare_v")
        p8 = (p * FP8_MAX).to(torch.float8_e4m3fn).float()
        return torch.bmm(p8, v) * (v_scale[:, None, :] / FP8_MAX)
    if p_buf is not None:
        return torch.bmm(p_buf.copy_(p), v)
    return torch.bmm(p.to(PV_TORCH_DTYPES[pv_dtype]), v)
