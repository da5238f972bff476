"""Ulysses, ring and 2D sequence-parallel attention on raw q/k/v against one-process attention."""

from __future__ import annotations

import functools

import pytest
import torch

from vdiff.attention import attention
from vdiff.parallel import ParallelConfig, build_mesh
from vdiff.parallel.ring import _block_grads, merge_attention
from vdiff.parallel.sequence import SequenceParallelAttention

B, H, D = 2, 4, 8


def _inputs(n: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(n)
    return tuple(torch.randn(B, H, n, D, generator=g, dtype=torch.float32) for _ in range(4))  # q, k, v, dout


def _reference(n: int) -> dict[str, torch.Tensor]:
    q, k, v, dout = _inputs(n)
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = attention(q, k, v)
    out.backward(dout)
    return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}


def _sharded_attention(rank: int, world_size: int, layouts: list[tuple[int, int, int]]) -> list[dict]:
    """For each (ulysses, ring, n): this rank's shard of out and of dq/dk/dv."""
    results = []
    for ulysses, ring, n in layouts:
        mesh = build_mesh(ParallelConfig(ulysses=ulysses, ring=ring))
        layout = mesh.sequence_layout()
        layout.valid_len = n
        q, k, v, dout = (layout.shard(t, dim=2) for t in _inputs(n))  # (B, H, Ls, D)
        q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
        op = SequenceParallelAttention(inner=functools.partial(attention, backend="sdpa"), layout=layout)
        out = op(q, k, v)  # (B, H, Ls, D)
        out.backward(dout)
        sp_rank = mesh.rank("sp")
        results.append({"sp_rank": sp_rank, "out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad})
    return results


def _check(per_rank: list[list[dict]], layouts: list[tuple[int, int, int]]) -> None:
    for i, (_, _, n) in enumerate(layouts):
        shards = sorted((r[i] for r in per_rank), key=lambda r: r["sp_rank"])
        ref = _reference(n)
        for key in ("out", "dq", "dk", "dv"):
            got = torch.cat([s[key] for s in shards], dim=2)[:, :, :n]  # drop the padding
            torch.testing.assert_close(got, ref[key], rtol=1e-4, atol=1e-5, msg=f"{layouts[i]} {key}")


@pytest.mark.dist
def test_ulysses_and_ring_on_two_ranks_match_full_attention(run_distributed):
    # NOTE: 7 tokens do not divide over 2 ranks: the padded key must not change anything.
    layouts = [(2, 1, 7), (1, 2, 7), (2, 1, 8), (1, 2, 8)]
    _check(run_distributed(_sharded_attention, 2, layouts), layouts)


@pytest.mark.dist
def test_ulysses_by_ring_grid_on_four_ranks_matches_full_attention(run_distributed):
    # NOTE: 5 tokens over 4 ranks pad to 8: the last ring block of (2, 2) holds one real key,
    # and with ring=4 the last block is all padding.
    layouts = [(2, 2, 5), (2, 2, 12), (1, 4, 5), (4, 1, 5)]
    _check(run_distributed(_sharded_attention, 4, layouts), layouts)


def test_merge_attention_equals_attention_over_the_union():
    q, k, v, _ = _inputs(9)
    halves = (slice(0, 4), slice(4, 9))
    (o1, l1), (o2, l2) = (attention(q, k[:, :, s], v[:, :, s], return_lse=True) for s in halves)
    out, lse = merge_attention(*merge_attention(None, None, o1, l1), o2, l2)
    ref, ref_lse = attention(q, k, v, return_lse=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-4, atol=1e-5)


def test_blockwise_backward_sums_to_autograd():
    """Ring backward's per-block formulas, summed over key blocks, equal autograd of attention."""
    q, k, v, dout = _inputs(9)
    ref = _reference(9)
    out, lse = attention(q, k, v, return_lse=True)
    delta = (dout * out).sum(-1)
    scale = D**-0.5
    dq = torch.zeros_like(q)
    dks, dvs = [], []
    for s in (slice(0, 3), slice(3, 9)):
        dq_b, dk_b, dv_b = _block_grads(q, k[:, :, s], v[:, :, s], dout, lse, delta, scale)
        dq += dq_b
        dks.append(dk_b)
        dvs.append(dv_b)
    torch.testing.assert_close(dq, ref["dq"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat(dks, 2), ref["dk"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat(dvs, 2), ref["dv"], rtol=1e-4, atol=1e-5)
