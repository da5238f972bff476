"""Collectives with autograd, for sequence parallelism.

Each is a ``torch.autograd.Function`` over plain ``torch.distributed`` collectives with its
adjoint as backward, so gradients cross ranks exactly as activations did:

* ``seq_to_heads`` / ``heads_to_seq``: the Ulysses all-to-all pair. Each is a permutation of
  data between ranks, so the backward of one is the other.
* ``gather_sequence``: all-gather along the token dimension; backward reduce-scatters (sums)
  the incoming gradients, because every rank of the group computes a loss from the gathered
  tensor. Returning only the local slice instead would divide the gradient by the group size
  (the sequence-parallel gradient-scaling bug this module is tested against).
* ``ring_shift``: send a tensor to the next rank of a ring and receive the previous one's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

ProcessGroup = dist.ProcessGroup

# NOTE: torch 2.13 renamed all_gather_into_tensor / reduce_scatter_tensor to *_single and
# deprecated the old names; pyproject allows torch >= 2.5, which has only the old ones.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _all_to_all(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Equal-split all-to-all along dim 0: chunk i goes to rank i; out chunk i came from rank i."""
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


def _seq_to_heads(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """(B, H, Ls, D) sequence-sharded -> (B, H/U, U*Ls, D) head-sharded over the U ranks."""
    u = dist.get_world_size(group)
    b, h, n, d = x.shape
    chunks = x.reshape(b, u, h // u, n, d).transpose(0, 1)  # (U, B, H/U, Ls, D): head group i -> rank i
    out = _all_to_all(chunks, group)  # (U, B, H/U, Ls, D): sequence chunk i from rank i
    return out.permute(1, 2, 0, 3, 4).reshape(b, h // u, u * n, d)  # (B, H/U, U*Ls, D)


def _heads_to_seq(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """(B, H/U, U*Ls, D) head-sharded -> (B, H, Ls, D) sequence-sharded (inverse of seq_to_heads)."""
    u = dist.get_world_size(group)
    b, hu, nu, d = x.shape
    chunks = x.reshape(b, hu, u, nu // u, d).permute(2, 0, 1, 3, 4)  # (U, B, H/U, Ls, D): seq chunk i
    out = _all_to_all(chunks, group)  # (U, B, H/U, Ls, D): head group i from rank i
    return out.transpose(0, 1).reshape(b, hu * u, nu // u, d)  # (B, H, Ls, D)


class _UlyssesAllToAll(torch.autograd.Function):
    """``to_heads`` picks the direction; the backward is the other direction (its inverse)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup, to_heads: bool) -> torch.Tensor:
        ctx.group, ctx.to_heads = group, to_heads
        return _seq_to_heads(x, group) if to_heads else _heads_to_seq(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        back = _heads_to_seq(grad, ctx.group) if ctx.to_heads else _seq_to_heads(grad, ctx.group)
        return back, None, None


def seq_to_heads(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Ulysses all-to-all: (B, H, Ls, D) with tokens sharded -> (B, H/U, U*Ls, D) with heads sharded.

    Rank i of the group receives head group i of every rank's tokens, concatenated in rank order.
    """
    u = dist.get_world_size(group)
    if x.shape[1] % u:
        raise ValueError(f"seq_to_heads: {x.shape[1]} heads cannot be split over {u} Ulysses ranks")
    return _UlyssesAllToAll.apply(x, group, True)


def heads_to_seq(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Inverse of :func:`seq_to_heads`: (B, H/U, U*Ls, D) -> (B, H, Ls, D)."""
    return _UlyssesAllToAll.apply(x, group, False)


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup, dim: int) -> torch.Tensor:
        ctx.group, ctx.dim = group, dim
        n = dist.get_world_size(group)
        local = x.movedim(dim, 0).contiguous()  # (Ls, ...)
        out = local.new_empty((n * local.shape[0], *local.shape[1:]))  # (S*Ls, ...)
        _all_gather_single(out, local, group=group)
        return out.movedim(0, dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        n = dist.get_world_size(ctx.group)
        full = grad.movedim(ctx.dim, 0).contiguous()  # (S*Ls, ...)
        out = full.new_empty((full.shape[0] // n, *full.shape[1:]))  # (Ls, ...)
        _reduce_scatter_single(out, full, op=dist.ReduceOp.SUM, group=ctx.group)
        return out.movedim(0, ctx.dim), None, None


def gather_sequence(x: torch.Tensor, group: ProcessGroup, *, dim: int = 1) -> torch.Tensor:
    """All-gather equal shards along ``dim`` in rank order; backward sums gradients over the group."""
    return _GatherSequence.apply(x, group, dim)


class PendingShift:
    """A ring shift in flight: :meth:`wait` returns the tensor received from the previous rank."""

    def __init__(self, x: torch.Tensor, group: ProcessGroup) -> None:
        n, r = dist.get_world_size(group), dist.get_rank(group)
        self._send = x.contiguous()
        self._recv = torch.empty_like(self._send)
        nxt = dist.get_global_rank(group, (r + 1) % n)
        prv = dist.get_global_rank(group, (r - 1) % n)
        # NOTE: post the receive and the send together; with two ranks next == previous, and a
        # blocking send-then-receive on both ranks could deadlock on backends without buffering.
        ops = [
            dist.P2POp(dist.irecv, self._recv, prv, group),
            dist.P2POp(dist.isend, self._send, nxt, group),
        ]
        self._reqs = dist.batch_isend_irecv(ops)

    def wait(self) -> torch.Tensor:
        for req in self._reqs:
            req.wait()
        return self._recv


def ring_shift(x: torch.Tensor, group: ProcessGroup) -> PendingShift:
    """Start sending ``x`` to the next rank of the group (cyclically) and receiving the previous one's.

    Returns at once so that computation overlaps the transfer; ``.wait()`` gives the received
    tensor. Not differentiable by itself: ring attention calls it inside its own autograd.Function.
    """
    return PendingShift(x, group)
