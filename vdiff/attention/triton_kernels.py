"""Triton kernels for ``sage``, ``sparse`` and ``sparse_sage`` on CUDA: one fused forward.

:func:`triton_block_attention` runs, per (batch x head, Q block) program, an online-softmax
(flash) loop over the K blocks that the block mask keeps, read from a look-up table of their
indices (SpargeAttn's layout), so skipped blocks cost neither FLOPs nor memory traffic:

* ``quantize=True``: Q·Kᵀ is an INT8 x INT8 -> INT32 ``tl.dot`` of the blocks quantised by
  :func:`vdiff.attention.quant.smooth_and_quantize` (K smoothed, softmax scale folded into Q, one
  scale per Q block and per K block), times the two scales;
  ``quantize=False``: a half-precision ``tl.dot`` of q and k, fp32 accumulation;
* P·V in V's dtype (fp16 or bf16) with fp32 accumulation, or for ``pv_dtype="fp8"`` (GPUs of
  compute capability 8.9+) in e4m3 with P stretched to [0, 448] and V scaled per channel, as
  SageAttention2 does;
* with ``pv_threshold`` (λ < 0), P·V is skipped for a K block when, for every row of the Q block,
  the block's largest score is below the row's *running* maximum by more than |λ|, exactly as
  SpargeAttn does; the normaliser still counts the block. (The PyTorch path compares with the
  final row maximum, which skips at least as much: the running maximum is never larger.)
* the log-sum-exp of the (unsmoothed) scores comes out for ring attention.

Forward only: the backends use it for inference; training (``sparse`` with gradients) takes the
PyTorch path. On CPU the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1``
set before this module is imported), which is how the tests check them against the PyTorch
reference on a machine without a GPU.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from vdiff.attention.quant import smooth_and_quantize

HEAD_DIMS = (64, 128)
"""head dims the kernel is built and tested for"""
Q_BLOCKS = (64, 128)
"""Q block sizes (rows per program) the kernel takes"""
K_BLOCKS = (32, 64, 128)
"""K block sizes the kernel takes"""
DTYPES = (torch.float16, torch.bfloat16)
"""input dtypes (q, k, v) the kernel takes"""

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


# NOTE: triton.jit reads TRITON_INTERPRET when it decorates, so the flag is fixed at import.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreted() -> bool:
    """Whether this module's kernels were built for Triton's CPU interpreter."""
    return _INTERPRETED


def unsupported_reason(
    q: torch.Tensor, *, q_block: int, k_block: int, pv_dtype: str, quantize: bool
) -> str | None:
    """Why the kernel cannot run these inputs (None when it can), phrased for an error message."""
    if q.device.type != "cuda" and not interpreted():
        return f"the Triton kernels run on CUDA, not {q.device.type} (on CPU only under TRITON_INTERPRET=1)"
    if q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} (the Triton kernels take {HEAD_DIMS})"
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} (the Triton kernels take fp16 and bf16 inputs)"
    if q_block not in Q_BLOCKS or k_block not in K_BLOCKS:
        return (
            f"blocks ({q_block}, {k_block}) (the Triton kernels take q_block {Q_BLOCKS}, k_block {K_BLOCKS})"
        )
    if quantize and pv_dtype not in ("fp16", "bf16", "fp8"):
        return f"pv_dtype {pv_dtype!r} (the Triton kernels compute P·V in fp16, bf16 or fp8)"
    if quantize and pv_dtype == "fp8":
        if k_block < 32:
            return "k_block < 32 with fp8 P·V (an fp8 MMA reduces over at least 32 keys)"
        if q.device.type == "cuda" and torch.cuda.get_device_capability(q.device) < (8, 9):
            return "fp8 P·V on this GPU (it needs compute capability 8.9 or newer: Ada, Hopper)"
    return None


@triton.jit
def _block_attn_fwd(
    Q,
    K,
    V,
    QS,
    KS,
    LUT,
    CNT,
    LAM,
    VS,
    OUT,
    LSE,
    n_q,
    n_k,
    nqb,
    nkb,
    heads,
    score_scale,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    QUANT: tl.constexpr,
    SPARSE: tl.constexpr,
    SKIP_PV: tl.constexpr,
    UPCAST: tl.constexpr,
    PV_FP8: tl.constexpr,
):
    # Q, OUT (BH, n_q, D); K, V (BH, n_k, D), contiguous; QS (BH, nqb), KS (BH, nkb) fp32 scales;
    # LUT (BH, nqb, nkb) int32 kept K blocks first; CNT (BH, nqb) int32; LAM (heads,) fp32;
    # LSE (BH, n_q) fp32. Scores are kept in log2 units (exp2 is the fast path).
    qb = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < n_q
    q = tl.load(Q + bh * n_q * D + offs_m[:, None] * D + offs_d[None, :], mask=row_ok[:, None], other=0)
    if QUANT:
        q_scale = tl.load(QS + bh * nqb + qb) * score_scale
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    if SPARSE:
        count = tl.load(CNT + bh * nqb + qb)
    else:
        count = nkb
    if SKIP_PV:
        lam = tl.load(LAM + bh % heads) * 1.4426950408889634
    for i in range(0, count):
        if SPARSE:
            kb = tl.load(LUT + (bh * nqb + qb) * nkb + i)
        else:
            kb = i
        offs_k = kb * BLOCK_N + offs_n
        key_ok = offs_k < n_k
        k = tl.load(K + bh * n_k * D + offs_k[:, None] * D + offs_d[None, :], mask=key_ok[:, None], other=0)
        if QUANT:
            k_scale = tl.load(KS + bh * nkb + kb)
            s = tl.dot(q, tl.trans(k), out_dtype=tl.int32).to(tl.float32) * (q_scale * k_scale)
        else:
            if UPCAST:
                s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32))) * score_scale
            else:
                s = tl.dot(q, tl.trans(k)) * score_scale
        s = tl.where(key_ok[None, :], s, float("-inf"))  # (BLOCK_M, BLOCK_N)
        m_blk = tl.max(s, 1)
        m_new = tl.maximum(m_i, m_blk)
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        m_i = m_new
        do_pv = True
        if SKIP_PV:
            do_pv = tl.max(tl.where(row_ok, m_blk - m_new, float("-inf")), 0) >= lam
        if do_pv:
            v_ptrs = V + bh * n_k * D + offs_k[:, None] * D + offs_d[None, :]
            v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
            if PV_FP8:
                # NOTE: P in [0, 1] stretched to e4m3's largest finite value, 448 (SageAttention2);
                # V was divided by its per-channel scale when it was cast to fp8.
                p_op = (p * 448.0).to(tl.float8e4nv)
            else:
                p_op = p.to(v.dtype)
            if UPCAST:
                acc = tl.dot(p_op.to(tl.float32), v.to(tl.float32), acc)
            else:
                acc = tl.dot(p_op, v, acc)
    acc = acc / l_i[:, None]
    if PV_FP8:
        acc = acc * (tl.load(VS + bh * D + offs_d) / 448.0)[None, :]
    o_ptrs = OUT + bh * n_q * D + offs_m[:, None] * D + offs_d[None, :]
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + bh * n_q + offs_m, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, mask=row_ok)


def num_warps(*, head_dim: int, q_block: int) -> int:
    """Warps per program: 8 for a 128-row Q block or head dim 128, else 4."""
    # NOTE: chosen from ptxas's resource report (python -m vdiff.attention.triton_kernels), not
    # from GPU timings (none yet): with 4 warps a 128 x 64 tile spilled on sm_80 (248-412 bytes
    # of stack) and needed 233-239 registers on sm_90; 8 warps spill nothing there.
    return 8 if head_dim == 128 or q_block == 128 else 4


def block_lut(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept K blocks of each Q block, ascending and first: mask (B, H, nqb, nkb) bool ->
    LUT (B*H, nqb, nkb) int32 and counts (B*H, nqb) int32."""
    b, h, nq, nk = mask.shape
    rows = mask.reshape(b * h, nq, nk)
    lut = rows.to(torch.int8).argsort(dim=-1, descending=True, stable=True).to(torch.int32)
    return lut.contiguous(), rows.sum(dim=-1, dtype=torch.int32).contiguous()


def triton_block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    scale: float,
    q_block: int = 128,
    k_block: int = 64,
    quantize: bool = False,
    smooth_k: bool = True,
    pv_dtype: str = "bf16",
    pv_threshold: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the K blocks ``mask`` keeps (None: all) with the Triton kernel.

    q (B, H, Nq, D), k, v (B, H, Nk, D) in fp16 or bf16; ``pv_threshold`` a per-head (H,) λ or
    None. Returns out (B, H, Nq, D) in q's dtype and the log-sum-exp (B, H, Nq) fp32. Unsupported
    inputs are a ValueError naming what to change (:func:`unsupported_reason`).
    """
    reason = unsupported_reason(q, q_block=q_block, k_block=k_block, pv_dtype=pv_dtype, quantize=quantize)
    if reason is not None:
        raise ValueError(f"Triton attention kernel: unsupported {reason}; use kernel='torch'")
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    nqb, nkb = math.ceil(n_q / q_block), math.ceil(n_k / k_block)
    dev = q.device
    if quantize:
        qi, q_scale, ki, k_scale, offset = smooth_and_quantize(
            q, k, scale=scale, q_block=q_block, k_block=k_block, smooth_k=smooth_k
        )
        qx, kx = qi.reshape(b * h, n_q, d).contiguous(), ki.reshape(b * h, n_k, d).contiguous()
        qs, ks = q_scale.reshape(b * h, nqb).contiguous(), k_scale.reshape(b * h, nkb).contiguous()
        score_scale = _LOG2E
        vx = v.to(torch.float16 if pv_dtype == "fp16" else torch.bfloat16)
    else:
        qx, kx = q.reshape(b * h, n_q, d).contiguous(), k.reshape(b * h, n_k, d).contiguous()
        qs = ks = torch.empty(1, device=dev)
        score_scale = scale * _LOG2E
        offset = None
        vx = v
    vx = vx.reshape(b * h, n_k, d).contiguous()
    out_dtype = vx.dtype
    vs = torch.empty(1, device=dev)
    if quantize and pv_dtype == "fp8":
        # NOTE: one scale per head and channel, as the PyTorch path's prepare_v.
        vs = (v.float().abs().amax(dim=2).clamp_min(1e-12) / 448.0).reshape(b * h, d).contiguous()
        vx = (v.float().reshape(b * h, n_k, d) / vs[:, None, :]).to(torch.float8_e4m3fn).contiguous()
        out_dtype = torch.bfloat16 if q.dtype == torch.bfloat16 else torch.float16
    if mask is not None and bool(mask.all()):
        mask = None
    if mask is not None:
        if mask.shape != (b, h, nqb, nkb):
            raise ValueError(f"block mask has shape {tuple(mask.shape)}, expected {(b, h, nqb, nkb)}")
        lut, cnt = block_lut(mask)
        if bool((cnt == 0).any()):
            raise RuntimeError("block mask keeps no K block for some Q block; keep at least one")
    else:
        lut = cnt = torch.empty(1, dtype=torch.int32, device=dev)
    lam = (
        torch.empty(1, device=dev)
        if pv_threshold is None
        else pv_threshold.to(device=dev, dtype=torch.float32).contiguous()
    )
    out = torch.empty(b * h, n_q, d, dtype=out_dtype, device=dev)
    lse = torch.empty(b * h, n_q, dtype=torch.float32, device=dev)
    _block_attn_fwd[(nqb, b * h)](
        qx,
        kx,
        vx,
        qs,
        ks,
        lut,
        cnt,
        lam,
        vs,
        out,
        lse,
        n_q,
        n_k,
        nqb,
        nkb,
        h,
        score_scale,
        D=d,
        BLOCK_M=q_block,
        BLOCK_N=k_block,
        QUANT=quantize,
        SPARSE=mask is not None,
        SKIP_PV=pv_threshold is not None,
        # NOTE: Triton's CPU interpreter multiplies bf16 (and fp8) tiles wrongly (numpy has
        # neither), so there the operands, already rounded to bf16/fp8, are multiplied in fp32:
        # the same products an MMA with fp32 accumulation computes. CUDA always takes the plain dot.
        UPCAST=interpreted() and vx.dtype in (torch.bfloat16, torch.float8_e4m3fn),
        PV_FP8=vx.dtype == torch.float8_e4m3fn,
        num_warps=num_warps(head_dim=d, q_block=q_block),
        num_stages=2,
    )
    out = out.view(b, h, n_q, d).to(q.dtype)
    lse = lse.view(b, h, n_q)
    return out, (lse + offset if offset is not None else lse)


# ----------------------------------------------------------------------------- ahead-of-time check


def compile_for_gpu(
    *,
    arch: int,
    head_dim: int,
    q_block: int = 128,
    k_block: int = 64,
    quantize: bool = True,
    sparse: bool = True,
    skip_pv: bool = False,
    pv_dtype: str = "bf16",
) -> object:
    """Compile the kernel for CUDA compute capability ``arch`` (80 = A100, 90 = H100) without a GPU.

    Runs Triton's whole pipeline down to a cubin (its bundled ptxas) for one variant, so type
    errors and dot shapes the architecture lacks surface on any machine. Returns Triton's
    ``CompiledKernel`` (``.asm["cubin"]``, ``.metadata.shared``). Needs this module imported
    without ``TRITON_INTERPRET``.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if interpreted():
        raise RuntimeError("compile_for_gpu needs the module built without TRITON_INTERPRET=1")
    half = "fp16" if pv_dtype == "fp16" else "bf16"
    qk = "i8" if quantize else half
    sig = dict.fromkeys(["QS", "KS", "LAM", "VS", "LSE"], "*fp32")
    sig.update(Q=f"*{qk}", K=f"*{qk}", V="*fp8e4nv" if pv_dtype == "fp8" else f"*{half}", OUT=f"*{half}")
    sig.update(
        LUT="*i32",
        CNT="*i32",
        score_scale="fp32",
        **dict.fromkeys(["n_q", "n_k", "nqb", "nkb", "heads"], "i32"),
    )
    consts = {
        "D": head_dim,
        "BLOCK_M": q_block,
        "BLOCK_N": k_block,
        "QUANT": quantize,
        "SPARSE": sparse,
        "SKIP_PV": skip_pv,
        "UPCAST": False,
        "PV_FP8": pv_dtype == "fp8",
    }
    sig.update(dict.fromkeys(consts, "constexpr"))
    src = ASTSource(fn=_block_attn_fwd, signature=sig, constexprs=consts)
    options = {"num_warps": num_warps(head_dim=head_dim, q_block=q_block), "num_stages": 2}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def resource_usage(kernel: object) -> str:
    """cuobjdump's register / stack (spill) / shared-memory line for a :func:`compile_for_gpu` result."""
    import subprocess
    import tempfile

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])  # type: ignore[attr-defined]
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    return next(
        (line.split("Resource usage:")[-1].strip() for line in out.splitlines() if "REG:" in line), out
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m vdiff.attention.triton_kernels``: compile each variant for sm_80/sm_90, print resources."""
    import argparse
    import itertools

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities")
    args = p.parse_args(argv)
    print("| arch | D | q_block | Q·K | P·V | λ skip | registers, stack (spills), shared |")
    print("|---|---|---|---|---|---|---|")
    for arch, d, bm, quant, pv, skip in itertools.product(
        args.arch, HEAD_DIMS, Q_BLOCKS, (False, True), ("bf16", "fp8"), (False, True)
    ):
        if pv == "fp8" and (not quant or arch < 89):
            continue
        k = compile_for_gpu(arch=arch, head_dim=d, q_block=bm, quantize=quant, skip_pv=skip, pv_dtype=pv)
        use = resource_usage(k)
        print(
            f"| sm_{arch} | {d} | {bm} | {'int8' if quant else 'bf16'} | {pv} | {skip} | {use} |", flush=True
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
