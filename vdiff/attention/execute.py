"""Attention over a block mask: picks an execution path and prepares its inputs.

:func:`block_sparse_attention` is stage 2 of the block-sparse backends and the whole of
``sage`` (an all-kept mask). The paths, same numerics:

* Triton (:mod:`vdiff.attention.triton_kernels`; CUDA, or Triton's CPU interpreter): one
  online-softmax kernel over exactly the mask;
* fused (:mod:`vdiff.attention.fused`): torch SDPA over the mask widened for speed (a superset);
* tiled (:mod:`vdiff.attention.tiled`): explicit scores over exactly the mask, INT8 by
  ``torch._int_mm``; it also serves every call that needs λ, the LSE or fp8 P·V;
* native (:mod:`vdiff.attention.native_cpu`; x86 CPUs with AVX512-VNNI and -BF16): one fused C
  kernel over exactly the mask, INT8 Q·Kᵀ and bf16 P·V, scores never leave registers; λ as Triton.

Every path receives the same mask from the caller; only the fused one adds blocks to it.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch

from vdiff.attention import native_cpu
from vdiff.attention.checks import per_head
from vdiff.attention.cpu import cpu_has_amx, cpu_has_vnni
from vdiff.attention.fused import Q_GROUP, dense_heads, fused_block_attention, group_rows
from vdiff.attention.quant import PV_TORCH_DTYPES, dequantize, smooth_and_quantize
from vdiff.attention.tiled import tiled_block_attention

KERNELS = ("auto", "triton", "native", "torch", "fused", "tiled")
"""values of the backends' ``kernel`` option"""

FULL_COST = {
    ("native", True, 128): 0.46,
    ("native", True, 64): 0.46,
    ("tiled", True, 128): 0.77,
    ("tiled", True, 64): 1.05,
    ("fused", False, 128): 1.7,
    ("fused", False, 64): 1.7,
    ("fused", True, 128): 1.7,
    ("fused", True, 64): 1.7,
}
"""(path, INT8 Q·Kᵀ, head dim) -> the path's time with every block kept, as a fraction of fp32
SDPA's, on the 2-core AMD EPYC with VNNI and no AMX of docs/benchmarks.md: the native kernel
(``sage`` against SDPA, N = 16384, video-like, 2026-12-06, the slower of two runs) 2.19x at D 128
and 2.20x at D 64; tiled INT8 (``sage``
against SDPA, N = 16384, video-like, quiet machine, 2026-12-06) 1.30x at D 128 and 0.95x at D 64
(2026-12-03: 1.59x and 1.16x; the slower day is used); the fused path over exactly the mask,
4.68 s for 0.31 of the blocks against SDPA's 8.83 s (D 128), i.e. ~1.7x SDPA per kept block
(gathers, and bf16 SDPA no faster than fp32 there). Other head dims use the nearest entry;
unmeasured combinations 1.7."""
MASK_COST = 0.05
"""mask prediction's share of SDPA time that :func:`dense_is_faster` adds (0.2 s of 8.8 s at
N = 16384, D = 128, rounded up)"""
MIN_SPARSE_TOKENS = 2048
"""below this many keys ``kernel="auto"`` on a CPU runs dense SDPA: a few 64-key blocks leave
little to skip, and the fixed costs (mask, gathers, quantisation) dominate"""
SAGE_MIN_SPEEDUP = 1.5
"""``sage`` with ``kernel="auto"`` on a CPU runs only where its measured speed-up over fp32 SDPA
reaches this (:func:`dense_is_faster` with every block kept); elsewhere dense SDPA"""


def dense_is_faster(
    *,
    kept: float,
    path: str,
    quantize: bool,
    head_dim: int,
    n_k: int,
    need: float = 1.0,
    mask_cost: float = MASK_COST,
) -> bool:
    """The CPU rule of ``kernel="auto"``: whether fp32 SDPA beats ``path`` at this kept fraction.

    The path's time is predicted as ``kept · FULL_COST + mask_cost`` of SDPA's (:data:`FULL_COST`,
    measured per CPU kind; ``mask_cost`` is 0 for ``sage``, which predicts no mask). SDPA wins when
    that is not below ``1 / need`` (``need`` > 1 asks the path for that speed-up, e.g.
    :data:`SAGE_MIN_SPEEDUP`), or when there are fewer than :data:`MIN_SPARSE_TOKENS` keys.
    """
    if n_k < MIN_SPARSE_TOKENS:
        return True
    d = 128 if head_dim >= 96 else 64
    cost = FULL_COST.get((path, quantize, d), 1.7)
    return kept * cost + mask_cost >= 1.0 / need


def computed_mask(mask: torch.Tensor, *, path: str, q_group: int = Q_GROUP) -> torch.Tensor:
    """The blocks that ``path`` ("fused", "tiled" or "triton") computes for the predicted ``mask``.

    The tiled and Triton paths compute exactly ``mask``; the fused one a superset: the union
    over each run of ``q_group`` Q blocks (:func:`~vdiff.attention.fused.group_rows`), and every
    block of a head whose union keeps more than :data:`~vdiff.attention.fused.DENSE_ABOVE`.
    """
    if path != "fused":
        return mask
    grouped = group_rows(mask, group=q_group)
    return grouped | dense_heads(grouped)[..., None, None]


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float,
    q_block: int = 128,
    k_block: int = 64,
    pv_threshold: float | torch.Tensor | None = None,
    quantize: bool = False,
    smooth_k: bool = True,
    pv_dtype: str = "fp32",
    need_lse: bool = True,
    q_group: int = Q_GROUP,
    kernel: str = "auto",
    widen: bool = True,
    min_speedup: float = 1.0,
    mask_cost: float = MASK_COST,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax attention over the blocks ``mask`` (B, H, nqb, nkb) keeps.

    Returns out (B, H, Nq, D) in q's dtype and the log-sum-exp (B, H, Nq) fp32 of the kept scores
    (None unless ``need_lse``).
    ``pv_threshold`` is λ (a float or per-head (H,) tensor; None disables the skip); ``quantize``
    computes Q·Kᵀ in INT8 as ``sage`` does (:mod:`vdiff.attention.quant`). Differentiable when
    ``quantize`` is False.

    ``kernel``: "triton" runs :mod:`vdiff.attention.triton_kernels` (CUDA, fp16/bf16, no
    gradients; exactly ``mask``), "fused" and "tiled" the PyTorch paths, "torch" the PyTorch path
    this machine runs faster (:func:`torch_path`), "auto" Triton where it can run these inputs
    (:func:`use_triton`), else as "torch", except that on a CPU, when no LSE or λ is needed, it
    runs dense fp32 SDPA over every block where :func:`dense_is_faster` predicts SDPA to be the
    faster (``min_speedup``: the speed-up the sparse path must promise, e.g. ``sage``'s 1.5).

    Fused (no λ, no LSE, P·V in fp32/bf16/fp16): Q and K (INT8 values dequantised exactly) go
    through torch's SDPA over the widened mask (:func:`computed_mask`, a superset of ``mask``,
    so never less accurate); a fused call that needs λ, the LSE or fp8 P·V runs the tiled code
    over that same widened mask. Tiled: exactly ``mask``. ``widen=False`` computes exactly
    ``mask`` on the fused path too (slower on CPU): calibration measures that, so its budget
    holds on every path.
    """
    b, h, n_q = q.shape[:3]
    n_k = k.shape[2]
    nq, nk = math.ceil(n_q / q_block), math.ceil(n_k / k_block)
    if mask.shape != (b, h, nq, nk):
        raise ValueError(f"block mask has shape {tuple(mask.shape)}, expected {(b, h, nq, nk)}")
    lam = None if pv_threshold is None else per_head(pv_threshold, heads=h, device=q.device).view(h)
    if lam is not None and bool((lam > 0).any()):
        # NOTE: λ > 0 would drop even the block holding a row's maximum (the output becomes 0).
        raise ValueError(
            f"pv_threshold (λ) must be <= 0, the score gap below the row maximum past which P·V is "
            f"skipped (e.g. -8); got {lam.tolist()}"
        )
    if use_triton(kernel, q, k, v, q_block=q_block, k_block=k_block, pv_dtype=pv_dtype, quantize=quantize):
        # NOTE: imported here: the module needs triton, and TRITON_INTERPRET is read at its import.
        from vdiff.attention.triton_kernels import triton_block_attention

        out, lse = triton_block_attention(
            q,
            k,
            v,
            mask,
            scale=scale,
            q_block=q_block,
            k_block=k_block,
            quantize=quantize,
            smooth_k=smooth_k,
            pv_dtype=pv_dtype,
            pv_threshold=lam,
        )
        return out, (lse if need_lse else None)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    path = cpu_path(
        kernel, q, q_block=q_block, k_block=k_block, pv_dtype=pv_dtype, quantize=quantize, lam=lam,
        needs_grad=needs_grad,
    )  # fmt: skip
    if kernel == "auto" and q.device.type == "cpu" and lam is None and not need_lse:
        kept = (
            float(computed_mask(mask, path=path, q_group=q_group).float().mean())
            if widen
            else float(mask.float().mean())
        )
        if dense_is_faster(
            kept=kept,
            path=path,
            quantize=quantize,
            head_dim=q.shape[-1],
            n_k=n_k,
            need=min_speedup,
            mask_cost=mask_cost,
        ):
            # NOTE: every block, exact: never less accurate than the sparse path it replaces.
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
            return out, None
    if widen and path == "fused":
        mask = computed_mask(mask, path="fused", q_group=q_group)
    else:
        q_group = 1  # the fused path reads one mask row per run of q_group Q blocks
    counts = mask.reshape(b * h * nq, nk).sum(dim=-1)  # (R,)
    if bool((counts == 0).any()):
        first = int((counts == 0).nonzero()[0, 0]) % nq
        raise RuntimeError(f"block mask keeps no K block for Q block {first}; keep at least one")
    if path == "native":
        return native_cpu.native_block_attention(
            q, k, v, mask, scale=scale, q_block=q_block, k_block=k_block, smooth_k=smooth_k,
            need_lse=need_lse, lam=lam,
        )  # fmt: skip
    int8 = offset = None
    if quantize:
        qi, q_scale, ki, k_scale, offset = smooth_and_quantize(
            q, k, scale=scale, q_block=q_block, k_block=k_block, smooth_k=smooth_k
        )
        int8 = (qi, q_scale, ki, k_scale)
    if path == "fused" and lam is None and not need_lse and pv_dtype in PV_TORCH_DTYPES:
        dt = PV_TORCH_DTYPES[pv_dtype]
        if int8 is not None:
            qd = dequantize(int8[0], int8[1], block=q_block, dtype=dt)
            kd = dequantize(int8[2], int8[3], block=k_block, dtype=dt)
            sdpa_scale = 1.0  # folded into Q before quantisation
        else:
            qd, kd, sdpa_scale = q.to(dt), k.to(dt), scale
        out = fused_block_attention(
            qd, kd, v.to(dt), mask, scale=sdpa_scale, q_block=q_block, k_block=k_block, q_group=q_group
        )
        return out.to(q.dtype), None
    out, lse = tiled_block_attention(
        q,
        k,
        v,
        mask,
        scale=scale,
        q_block=q_block,
        k_block=k_block,
        int8=int8,
        lam=lam,
        pv_dtype=pv_dtype,
        need_lse=need_lse,
    )
    if lse is not None and offset is not None:
        lse = lse + offset
    return out, lse


def cpu_path(
    kernel: str,
    q: torch.Tensor,
    *,
    q_block: int,
    k_block: int,
    pv_dtype: str,
    quantize: bool,
    lam: torch.Tensor | None,
    needs_grad: bool = False,
) -> str:
    """The path ("native", "fused" or "tiled") that ``kernel`` picks when Triton does not run.

    "native" insists on the C kernel (an error says why it cannot run); "auto" takes it wherever
    it can run the call (:func:`vdiff.attention.native_cpu.supports`), else :func:`torch_path`.
    """
    if kernel in ("native", "auto"):
        reason = native_cpu.supports(
            q, q_block=q_block, k_block=k_block, pv_dtype=pv_dtype, quantize=quantize, lam=lam,
            needs_grad=needs_grad,
        )  # fmt: skip
        if kernel == "native":
            if reason is not None:
                raise ValueError(
                    f"kernel='native' cannot run this call: {reason}; use kernel='torch' or 'auto'"
                )
            return "native"
        # NOTE: measured against both PyTorch paths on the AMD EPYC of docs/benchmarks.md (2.2x
        # fp32 SDPA with every block kept at N = 16384, where tiled INT8 ran 0.9-1.3x). With AMX,
        # torch's bf16 SDPA (the fused path) was the fast one and the kernel is unmeasured there,
        # so "auto" keeps the fused path on such CPUs.
        if reason is None and not cpu_has_amx():
            return "native"
    return torch_path(kernel, q, quantize=quantize)


def torch_path(kernel: str, q: torch.Tensor, *, quantize: bool) -> str:
    """The PyTorch path ("fused" or "tiled") that ``kernel`` picks when Triton does not run.

    "auto"/"torch": tiled for INT8 Q·Kᵀ on a CPU with VNNI but no AMX, else fused.
    """
    if kernel in ("fused", "tiled"):
        return kernel
    # NOTE: measured at N = 16384, 12 heads, D = 128, video-like inputs in tile order, cdf 0.9
    # (docs/benchmarks.md): on an AMD EPYC with AVX512-VNNI/BF16 but no AMX, SDPA runs bf16 no
    # faster than fp32, while torch._int_mm runs INT8 fast, so the tiled INT8 path over the exact
    # mask took 2.46 s against 4.68 s fused (same blocks) and 6.38 s fused over the widened mask.
    # With AMX (Intel Xeon, same N, D, cdf) the fused bf16 path is the faster one: 3.09 s against
    # 6.82 s tiled in tile order, 3.99 s against 11.79 s in raster order, because there
    # torch._int_mm ran ~7x slower than a bf16 matmul of the same shape. CPUs without VNNI were
    # not measured and keep the fused path.
    if quantize and q.device.type == "cpu" and cpu_has_vnni() and not cpu_has_amx():
        return "tiled"
    return "fused"


@functools.cache
def _triton_installed() -> bool:
    # NOTE: asked once, not on every attention call of every layer.
    return importlib.util.find_spec("triton") is not None


def use_triton(
    kernel: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    q_block: int,
    k_block: int,
    pv_dtype: str,
    quantize: bool,
) -> bool:
    """Whether ``kernel`` ("auto", "triton" or "torch") picks the Triton kernel for these inputs.

    "auto" picks it on CUDA when Triton imports, no gradient is needed and the inputs are ones
    it takes; "triton" insists, and inputs it cannot run are an error saying why.
    """
    if kernel not in KERNELS:
        raise ValueError(f"sparse/sage option kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel in ("native", "torch", "fused", "tiled"):
        return False
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if kernel == "auto" and (q.device.type != "cuda" or needs_grad or not _triton_installed()):
        return False
    if needs_grad:
        raise ValueError("kernel='triton' is forward-only; use kernel='torch' (or 'auto') for gradients")
    try:
        from vdiff.attention.triton_kernels import unsupported_reason
    except ImportError as e:
        raise ValueError(f"kernel='triton' needs the triton package ({e}); pip install triton") from e
    reason = unsupported_reason(q, q_block=q_block, k_block=k_block, pv_dtype=pv_dtype, quantize=quantize)
    if reason is not None and kernel == "triton":
        raise ValueError(f"kernel='triton' cannot run {reason}; use kernel='torch' or 'auto'")
    return reason is None
