"""Ulysses sequence parallelism: all-to-all from sequence-sharded to head-sharded and back.

Before attention each of the U ranks holds all heads of 1/U of the tokens; one all-to-all gives
it 1/U of the heads for all tokens, attention runs locally with any backend, and a second
all-to-all returns the output to sequence sharding. The head count must be divisible by U.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from vdiff.parallel.collectives import heads_to_seq, seq_to_heads

AttentionOp = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def check_heads(num_heads: int, ulysses: int) -> None:
    """Raise a clear error when ``ulysses`` does not divide the head count (ring has no such limit)."""
    if num_heads % ulysses:
        divisors = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
        raise ValueError(
            f"parallel.ulysses={ulysses} does not divide the model's {num_heads} attention heads; "
            f"use a Ulysses degree in {divisors} and put the rest of the sequence parallelism on "
            f"ring attention (parallel.ring), which has no head constraint"
        )


def ulysses_scatter_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: dist.ProcessGroup
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, H, Ls, D) x3 sequence-sharded -> (B, H/U, U*Ls, D) x3 head-sharded, in one all-to-all."""
    check_heads(q.shape[1], dist.get_world_size(group))
    qkv = seq_to_heads(torch.cat([q, k, v], dim=0), group)  # (3B, H/U, U*Ls, D)
    q, k, v = qkv.chunk(3, dim=0)
    return q, k, v


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group: dist.ProcessGroup,
    attn: AttentionOp,
) -> torch.Tensor:
    """Self-attention over the full sequence from sequence-sharded (B, H, Ls, D) q/k/v.

    ``attn`` runs on (B, H/U, U*Ls, D): the gathered sequence in rank order, a slice of heads.
    """
    q, k, v = ulysses_scatter_qkv(q, k, v, group)
    out = attn(q, k, v)  # (B, H/U, U*Ls, D)
    return heads_to_seq(out, group)  # (B, H, Ls, D)
