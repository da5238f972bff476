"""``sage``: SageAttention-style quantized attention (INT8 Q·Kᵀ, half-precision P·V).

The recipe (Zhang et al., SageAttention, ICLR 2025) is :mod:`vdiff.attention.quant`'s: K
smoothing, the softmax scale folded into Q, INT8 Q and K with one power-of-two scale per block,
exact INT32 (or exactly dequantised half-precision) scores, P·V in ``pv_dtype`` with fp32
accumulation. The backend runs it over an all-kept block mask through
:func:`vdiff.attention.execute.block_sparse_attention`, so it has the same execution paths as
the sparse backends: the fused one (torch SDPA on the dequantised tensors: flash tiling, no N²
score matrix; used when neither the LSE nor fp8 is asked for), the tiled one (``torch._int_mm``
per Q block, explicit softmax; used for ``return_lse`` and ``pv_dtype="fp8"``), the native CPU
kernel (:mod:`vdiff.attention.native_cpu`: INT8 scores in registers; what ``kernel="auto"`` runs
on CPUs with AVX512-VNNI/BF16 and no AMX) and Triton.

The log-sum-exp it returns is that of the *unsmoothed* scores (the smoothing constant is added
back in fp32), so ring attention can merge partial results across K shards exactly.

Inference-only (quantisation has no useful gradient).
"""

from __future__ import annotations

import math

import torch

from vdiff.attention.checks import check_blocks, check_qkv
from vdiff.attention.execute import SAGE_MIN_SPEEDUP, block_sparse_attention
from vdiff.attention.quant import resolve_pv_dtype
from vdiff.attention.registry import register_backend


@register_backend(
    "sage",
    dtypes=(torch.float32, torch.float16, torch.bfloat16),
    supports_grad=False,
    supports_lse=True,
)
def sage_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    return_lse: bool = False,
    q_block: int = 128,
    k_block: int = 64,
    smooth_k: bool = True,
    pv_dtype: str = "auto",
    layer_index: int | None = None,
    head_offset: int = 0,
    num_heads: int | None = None,
    grid: tuple[int, int, int] | list[int] | None = None,
    kernel: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention-style INT8 Q·Kᵀ with K smoothing and per-block scales (inference only).

    ``layer_index``, ``head_offset``, ``num_heads`` and ``grid`` are accepted so one options dict serves every
    backend; sage is dense, has no per-layer state and ignores them. ``kernel`` picks the Triton
    kernel, the native CPU kernel or a PyTorch path (see :func:`vdiff.attention.execute.use_triton`
    and :func:`~vdiff.attention.execute.cpu_path`); with "auto" on a
    CPU where sage is not measured >= 1.5x fp32 SDPA (:data:`~vdiff.attention.execute.SAGE_MIN_SPEEDUP`)
    it runs SDPA instead.
    """
    check_qkv("sage", q, k, v)
    check_blocks("sage", q_block=q_block, k_block=k_block)
    pv = resolve_pv_dtype(pv_dtype, device=q.device, in_dtype=q.dtype)
    b, h, n_q, _ = q.shape
    full = torch.ones(
        b, h, math.ceil(n_q / q_block), math.ceil(k.shape[2] / k_block), dtype=torch.bool, device=q.device
    )  # (B, H, nqb, nkb)
    out, lse = block_sparse_attention(
        q,
        k,
        v,
        full,
        scale=scale,
        q_block=q_block,
        k_block=k_block,
        quantize=True,
        smooth_k=smooth_k,
        pv_dtype=pv,
        need_lse=return_lse,
        kernel=kernel,
        min_speedup=SAGE_MIN_SPEEDUP,
        mask_cost=0.0,
    )
    return (out, lse) if return_lse else out
