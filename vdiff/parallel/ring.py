"""Ring attention: exact attention over a sequence sharded across the ranks of a ring.

Every rank holds a block of queries and the matching block of keys/values. The K/V blocks
travel around the ring (R - 1 shifts); each rank attends its queries to every block in turn and
merges the partial results with their log-sum-exp (the flash-attention online softmax), so the
result equals attention over the whole sequence while no rank holds more than two K/V blocks.

The backward is its own ring pass: the K/V blocks travel again, together with accumulators for
their gradients dK/dV; each rank adds its queries' contribution and passes them on, and after R
shifts every accumulator is back at the rank that owns its block. Each block's gradients come
from a flash-attention backward kernel fed the *global* output and log-sum-exp, which makes the
recomputed probabilities that block's slice of the full softmax; so the block terms sum to the
full gradient and memory stays linear in the block length.

Per block, :func:`block_attention` and :func:`block_attention_backward` call a fused kernel
that returns the log-sum-exp (:func:`block_kernel` says which): torch's CPU flash attention,
CUDA flash attention (fp16/bf16) or CUDA memory-efficient attention, and explicit fp32 matrix
products (which hold the (Nq, Nk) score matrix) only for inputs none of them accepts. Backends
other than ``sdpa`` (sparse, sage: any that return the LSE) compute the forward blocks through
:func:`vdiff.attention.attention`; the backward is the dense one, as for ``sdpa``.

Padding: ``valid_lens[j]`` is how many keys of ring rank j's block are real; the rest (the
padding added to make the sequence divisible) are never attended to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from vdiff.attention import attention
from vdiff.parallel.collectives import ring_shift

_aten = torch.ops.aten
# NOTE: not float64: its CPU kernel wants a float64 LSE, and the ring merges in float32.
_CPU_FLASH_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_KERNELS = ("cpu_flash", "cuda_flash", "cuda_efficient", "math")
"""the per-block kernels of :func:`block_attention`; ``math`` is explicit fp32 matmuls"""


def merge_attention(
    out: torch.Tensor | None, lse: torch.Tensor | None, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attentions over disjoint key sets into attention over their union.

    ``out`` (B, H, N, D) and ``lse`` (B, H, N) hold softmax-normalised results over one key set;
    ``None`` stands for the empty set. Returns float32 ``(out, lse)``.
    """
    out_b, lse_b = out_b.float(), lse_b.float()
    if out is None or lse is None:
        return out_b, lse_b
    new_lse = torch.logaddexp(lse, lse_b)  # (B, H, N)
    merged = out * torch.exp(lse - new_lse).unsqueeze(-1) + out_b * torch.exp(lse_b - new_lse).unsqueeze(-1)
    return merged, new_lse


def block_kernel(q: torch.Tensor, k: torch.Tensor) -> str:
    """The kernel that :func:`block_attention` uses for these inputs.

    ``"cpu_flash"``, ``"cuda_flash"``, ``"cuda_efficient"``, or ``"math"`` (explicit fp32
    matrix products) when no fused kernel accepts the device, dtype or head dim.
    """
    if q.device.type == "cpu":
        return "cpu_flash" if q.dtype in _CPU_FLASH_DTYPES else "math"
    if q.device.type == "cuda":
        # NOTE: torch's own SDPA checks (GPU architecture, dtype, head dim, alignment, the
        # enable flags), so ring picks the kernel SDPA itself would pick.
        params = torch.backends.cuda.SDPAParams(q, k, k, None, 0.0, False, False)
        if torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.can_use_flash_attention(params):
            return "cuda_flash"
        if (
            torch.backends.cuda.mem_efficient_sdp_enabled()
            and torch.backends.cuda.can_use_efficient_attention(params)
        ):
            return "cuda_efficient"
    return "math"


def _math_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    lse = torch.logsumexp(s, dim=-1)  # (B, H, Nq)
    out = torch.matmul(torch.exp(s - lse.unsqueeze(-1)), v.float())  # (B, H, Nq, D)
    return out.to(q.dtype), lse


def _block_grads(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dout: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of attention from queries ``q`` to one K/V block, all float32 (the math kernel).

    ``lse`` (B, H, Nq) is the log-sum-exp over ALL keys and ``delta = rowsum(dout * out)``, so
    ``p`` below is this block's slice of the full softmax and the block terms sum to the full
    gradient.
    """
    s = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    p = torch.exp(s - lse.unsqueeze(-1))  # (B, H, Nq, Nk)
    dv = torch.matmul(p.transpose(-1, -2), dout)  # (B, H, Nk, D)
    dp = torch.matmul(dout, v.transpose(-1, -2))  # (B, H, Nq, Nk)
    ds = p * (dp - delta.unsqueeze(-1)) * scale  # (B, H, Nq, Nk)
    dq = torch.matmul(ds, k)  # (B, H, Nq, D)
    dk = torch.matmul(ds.transpose(-1, -2), q)  # (B, H, Nk, D)
    return dq, dk, dv


def _bmhk(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) with (B, N, H, D) storage, the layout memory-efficient attention writes."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def block_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, kernel: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q`` (B, H, Nq, D) to one K/V block (B, H, Nk, D) with a fused kernel.

    Returns the output (B, H, Nq, D) in ``q``'s dtype and the natural-log log-sum-exp of the
    scaled scores, (B, H, Nq), float32. ``kernel`` defaults to :func:`block_kernel`'s choice.
    """
    kernel = block_kernel(q, k) if kernel is None else kernel
    if kernel == "cpu_flash":
        out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
    elif kernel == "cuda_flash":
        out, lse, *_ = _aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)
    elif kernel == "cuda_efficient":
        out, lse, _, _ = _aten._scaled_dot_product_efficient_attention(
            q, k, v, None, True, 0.0, False, scale=scale
        )
        lse = lse[..., : q.shape[2]]  # NOTE: the kernel pads the LSE's query dim to a multiple of 32
    elif kernel == "math":
        out, lse = _math_forward(q, k, v, scale)
    else:
        raise ValueError(f"ring attention: unknown block kernel {kernel!r}; use one of {BLOCK_KERNELS}")
    return out, lse


def block_attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    kv: tuple[torch.Tensor, torch.Tensor],
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    scale: float,
    kernel: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of attention from ``q`` to one K/V block ``kv``, given the GLOBAL ``out`` and ``lse``.

    ``out`` (B, H, Nq, D) and ``lse`` (B, H, Nq), contiguous float32, are the result over all
    keys, so the block's recomputed probabilities are its slice of the full softmax and the
    per-block terms sum to the full gradient. ``dout``, ``out`` and ``q`` share a dtype; the
    gradients have it too.
    """
    k, v = kv
    kernel = block_kernel(q, k) if kernel is None else kernel
    # NOTE: no dropout and no varlen (cum_seq None): the kernels never read the RNG state.
    rng = torch.zeros((), dtype=torch.long, device=q.device)
    if kernel == "cpu_flash":
        return _aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, False, scale=scale
        )
    if kernel == "cuda_flash":
        return _aten._scaled_dot_product_flash_attention_backward(
            dout, q, k, v, out, lse, None, None, q.shape[2], k.shape[2], 0.0, False, rng, rng, scale=scale
        )
    if kernel == "cuda_efficient":
        # NOTE: this kernel reads the output with (B, N, H, D) strides whatever its layout.
        grads = _aten._scaled_dot_product_efficient_attention_backward(
            dout, q, k, v, None, _bmhk(out), lse, rng, rng, 0.0, [True, True, True, False], False, scale=scale
        )
        return grads[0], grads[1], grads[2]
    if kernel != "math":
        raise ValueError(f"ring attention: unknown block kernel {kernel!r}; use one of {BLOCK_KERNELS}")
    qf, doutf = q.float(), dout.float()
    delta = (doutf * out.float()).sum(-1)  # (B, H, Nq)
    dq, dk, dv = _block_grads(qf, k.float(), v.float(), doutf, lse.float(), delta, scale)
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)


def _forward_block(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "sdpa":
        # NOTE: attention(backend="sdpa", return_lse=True) computes the LSE with explicit
        # matmuls (so that autograd reaches it); ring needs no autograd here and uses a kernel.
        return block_attention(q, k, v, scale=scale)
    out, lse = attention(q, k, v, backend=backend, scale=scale, return_lse=True)
    return out, lse


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        group: dist.ProcessGroup,
        valid_lens: tuple[int, ...],
        scale: float,
        backend: str,
    ) -> torch.Tensor:
        n_ranks, rank = dist.get_world_size(group), dist.get_rank(group)
        kv = torch.stack([k, v])  # (2, B, H, Lk, D): one message per step
        out = lse = None
        for step in range(n_ranks):
            owner = (rank - step) % n_ranks  # ring rank whose block we hold now
            pending = ring_shift(kv, group) if step < n_ranks - 1 else None
            n = valid_lens[owner]
            if n > 0:
                o_b, lse_b = _forward_block(q, kv[0, :, :, :n], kv[1, :, :, :n], scale=scale, backend=backend)
                out, lse = merge_attention(out, lse, o_b, lse_b)
            if pending is not None:
                kv = pending.wait()
        if out is None or lse is None:
            raise ValueError("ring attention: every key block is padding (valid_lens are all 0)")
        out = out.to(q.dtype)
        # NOTE: the backward kernels take the output in q's dtype (flash attention's own
        # convention) and the float32 LSE, contiguous (B, H, Nq).
        ctx.save_for_backward(q, k, v, out, lse.contiguous())
        ctx.group, ctx.valid_lens, ctx.scale = group, valid_lens, scale
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        group, valid_lens, scale = ctx.group, ctx.valid_lens, ctx.scale
        n_ranks, rank = dist.get_world_size(group), dist.get_rank(group)
        dout = dout.to(q.dtype).contiguous()
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        kv = torch.stack([k, v])  # (2, B, H, Lk, D)
        # NOTE: float32 accumulators travel with their block, so the R block terms add in fp32.
        dkv = torch.zeros(kv.shape, dtype=torch.float32, device=kv.device)
        for step in range(n_ranks):
            owner = (rank - step) % n_ranks
            kv_pending = ring_shift(kv, group) if step < n_ranks - 1 else None
            n = valid_lens[owner]
            if n > 0:
                block = (kv[0, :, :, :n], kv[1, :, :, :n])
                dq_b, dk_b, dv_b = block_attention_backward(dout, q, block, out, lse, scale=scale)
                dq += dq_b
                dkv[0, :, :, :n] += dk_b
                dkv[1, :, :, :n] += dv_b
            # NOTE: the accumulators shift R times (K/V only R - 1): after the last shift each
            # rank holds the gradients of its own block, summed over every rank's queries.
            dkv = ring_shift(dkv, group).wait()
            if kv_pending is not None:
                kv = kv_pending.wait()
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group: dist.ProcessGroup,
    valid_lens: Sequence[int] | None = None,
    scale: float | None = None,
    backend: str = "sdpa",
) -> torch.Tensor:
    """Attention of local queries (B, H, Lq, D) over the keys/values of every rank in ``group``.

    ``k``/``v`` (B, H, Lk, D) are this rank's block; blocks are equal-sized across ranks, and
    ``valid_lens[j]`` (default: all ``Lk``) counts the real keys of ring rank j's block.
    ``backend`` is the attention-registry backend of the forward blocks; it must return the
    log-sum-exp. ``sdpa`` (the default) runs fused kernels (see :func:`block_kernel`).
    """
    n_ranks = dist.get_world_size(group)
    lk = k.shape[2]
    lens = tuple(int(n) for n in valid_lens) if valid_lens is not None else (lk,) * n_ranks
    if len(lens) != n_ranks or any(not 0 <= n <= lk for n in lens):
        raise ValueError(
            f"ring_attention: valid_lens={lens} must give one count in [0, {lk}] for each of {n_ranks} ranks"
        )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _RingAttention.apply(q, k, v, group, lens, scale, backend)
