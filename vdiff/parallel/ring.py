"""Ring attention: exact attention over a sequence sharded across the ranks of a ring.

Every rank holds a block of queries and the matching block of keys/values. The K/V blocks
travel around the ring (R - 1 shifts); each rank attends its queries to every block in turn and
merges the partial results with their log-sum-exp (the flash-attention online softmax), so the
result equals attention over the whole sequence while no rank holds more than two K/V blocks.

The backward is its own ring pass: the K/V blocks travel again, together with accumulators for
their gradients dK/dV; each rank adds its queries' contribution and passes them on, and after R
shifts every accumulator is back at the rank that owns its block. Softmax probabilities are
recomputed from the saved log-sum-exp, so memory stays linear in the block length.

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


def _block_grads(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dout: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of attention from queries ``q`` to one K/V block, all float32.

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
                o_b, lse_b = attention(
                    q, kv[0, :, :, :n], kv[1, :, :, :n], backend=backend, scale=scale, return_lse=True
                )
                out, lse = merge_attention(out, lse, o_b, lse_b)
            if pending is not None:
                kv = pending.wait()
        if out is None or lse is None:
            raise ValueError("ring attention: every key block is padding (valid_lens are all 0)")
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.group, ctx.valid_lens, ctx.scale = group, valid_lens, scale
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        group, valid_lens, scale = ctx.group, ctx.valid_lens, ctx.scale
        n_ranks, rank = dist.get_world_size(group), dist.get_rank(group)
        qf, dout = q.float(), dout.float()
        delta = (dout * out).sum(-1)  # (B, H, Nq)
        dq = torch.zeros_like(qf)
        kv = torch.stack([k, v]).float()  # (2, B, H, Lk, D)
        dkv = torch.zeros_like(kv)  # gradient accumulators travelling with their block
        for step in range(n_ranks):
            owner = (rank - step) % n_ranks
            kv_pending = ring_shift(kv, group) if step < n_ranks - 1 else None
            n = valid_lens[owner]
            if n > 0:
                dq_b, dk_b, dv_b = _block_grads(qf, kv[0, :, :, :n], kv[1, :, :, :n], dout, lse, delta, scale)
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
    ``backend`` is the attention-registry backend used per block; it must return the log-sum-exp.
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
