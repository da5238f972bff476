"""The fused PyTorch execution path: torch SDPA (flash tiling, no N² score matrix) over a block mask.

Heads that keep every block go through one dense SDPA call; the others through one SDPA call
per chunk of query tiles over their gathered K/V blocks. For speed on CPU the dispatcher
(:func:`vdiff.attention.execute.block_sparse_attention`) first widens the mask: each run of
:data:`Q_GROUP` Q blocks computes the union of their kept K blocks (:func:`group_rows`), and a
head whose widened mask keeps more than :data:`DENSE_ABOVE` of its blocks is computed densely.
Both only add blocks to the predicted mask, never drop one.
"""

from __future__ import annotations

import math

import torch

from vdiff.attention.layout import block_chunks, to_blocks

Q_GROUP = 4
"""consecutive Q blocks that share one set of K blocks (the union of theirs)"""
# NOTE: torch's CPU flash kernel packs each K/V tile for the AMX/AVX GEMMs once per call and head,
# so a call with only 128 queries per head ran ~2.6x slower per score than a long one (measured,
# bf16, 1 thread). Merging 4 Q blocks (512 queries, raster order: neighbours with nearly the same
# K blocks) amortises it, at the cost of a few more computed blocks.


DENSE_ABOVE = 0.6
"""the fused path runs plain dense SDPA when the grouped mask keeps more than this fraction"""
# NOTE: gathering K/V per query tile of 512 made SDPA's CPU kernel ~1.7x slower per computed block
# than one dense call (measured, bf16, 1 thread, all blocks but one kept), so above ~60% kept the
# dense call is faster, and exact.


def dense_heads(grouped_mask: torch.Tensor) -> torch.Tensor:
    """(B, H) bool: heads whose :func:`group_rows` mask keeps more than :data:`DENSE_ABOVE`.

    Decided per head, so a head's result does not depend on which other heads share the call
    (Ulysses gives each rank a different subset).
    """
    return grouped_mask.float().mean(dim=(2, 3)) > DENSE_ABOVE


def fused_fraction(grouped_mask: torch.Tensor) -> float:
    """Fraction of blocks computed for a :func:`group_rows` mask (dense heads count in full)."""
    return float((grouped_mask | dense_heads(grouped_mask)[..., None, None]).float().mean())


def group_rows(mask: torch.Tensor, *, group: int) -> torch.Tensor:
    """The mask (B, H, nqb, nkb) with each run of ``group`` Q blocks keeping the union of their K blocks."""
    if group <= 1:
        return mask
    b, h, nq, nk = mask.shape
    ng = math.ceil(nq / group)
    padded = torch.nn.functional.pad(mask, (0, 0, 0, ng * group - nq))  # pads with False
    union = padded.view(b, h, ng, group, nk).any(dim=3)  # (B, H, ng, nk)
    return union.repeat_interleave(group, dim=2)[:, :, :nq]


def fused_block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float,
    q_block: int,
    k_block: int,
    q_group: int = 1,
) -> torch.Tensor:
    """Block-sparse attention through torch SDPA: q (B, H, Nq, D), k, v (B, H, Nk, D) in one dtype.

    ``mask`` (B, H, nqb, nkb) must keep the same K blocks within each run of ``q_group`` Q blocks
    (:func:`group_rows`); each run is one SDPA query tile. Heads that keep every block go through
    one dense SDPA call. Returns (B, H, Nq, D); differentiable (SDPA's own backward).
    """
    b, h, n_q, d = q.shape
    full = mask.flatten(2).all(dim=-1).view(-1)  # (B*H,)
    if bool(full.all()):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    q3, k3, v3 = (x.reshape(b * h, 1, x.shape[2], d) for x in (q, k, v))  # (B*H, 1, N, D)
    dense_idx, sparse_idx = full.nonzero().view(-1), (~full).nonzero().view(-1)
    parts = []
    if dense_idx.numel():
        sub = [x.index_select(0, dense_idx).transpose(0, 1) for x in (q3, k3, v3)]  # (1, Hd, N, D)
        parts.append(torch.nn.functional.scaled_dot_product_attention(*sub, scale=scale)[0])
    sub = [x.index_select(0, sparse_idx).transpose(0, 1) for x in (q3, k3, v3)]  # (1, Hs, N, D)
    rows = mask.reshape(b * h, *mask.shape[2:]).index_select(0, sparse_idx)[None]  # (1, Hs, nqb, nkb)
    parts.append(
        _gathered_attention(*sub, rows, scale=scale, q_block=q_block, k_block=k_block, q_group=q_group)[0]
    )
    inv = torch.cat([dense_idx, sparse_idx]).argsort()
    return torch.cat(parts).index_select(0, inv).view(b, h, n_q, d)


def _gathered_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float,
    q_block: int,
    k_block: int,
    q_group: int,
) -> torch.Tensor:
    """:func:`fused_block_attention` for heads that skip blocks: SDPA over gathered K/V per query tile."""
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    nk = math.ceil(n_k / k_block)
    tile = q_block * q_group
    rows_mask = mask[:, :, ::q_group].reshape(-1, nk)  # (R, nk): one row per query tile
    nt = rows_mask.shape[0] // (b * h)
    q_rows = to_blocks(q, block=tile).reshape(-1, tile, d)  # (B*H*nt, tile, D)
    k_rows = to_blocks(k, block=k_block).reshape(-1, k_block, d)  # (B*H*nk, bk, D)
    v_rows = to_blocks(v, block=k_block).reshape(-1, k_block, d)
    key_ok = torch.arange(nk * k_block, device=q.device).view(nk, k_block) < n_k  # (nk, bk)
    # NOTE: SDPA keeps no score matrix, so a chunk is bounded by its gathered K (and V) instead.
    order, chunks = block_chunks(rows_mask, rows_per_head=nt, elems_per_block=k_block * d)
    outs = []
    for ch in chunks:
        sel, c, cols, flat = ch.rows, ch.width, ch.cols, ch.flat
        g = sel.numel()
        k_sel = k_rows.index_select(0, flat).view(1, g, c * k_block, d)
        v_sel = v_rows.index_select(0, flat).view(1, g, c * k_block, d)
        ok = key_ok.index_select(0, cols.reshape(-1)).view(g, c, k_block)
        ok = ok & ch.valid[..., None]  # (G, c, bk)
        attn_mask = None
        if not bool(ok.all()):
            attn_mask = torch.zeros(ok.shape, dtype=q.dtype, device=q.device).masked_fill_(~ok, float("-inf"))
            attn_mask = attn_mask.view(1, g, 1, c * k_block)
        q_sel = q_rows.index_select(0, sel).unsqueeze(0)  # (1, G, tile, D)
        out = torch.nn.functional.scaled_dot_product_attention(
            q_sel, k_sel, v_sel, attn_mask=attn_mask, scale=scale
        )
        outs.append(out[0])  # (G, tile, D)
    inv = order.argsort()
    return torch.cat(outs).index_select(0, inv).view(b, h, nt * tile, d)[:, :, :n_q]
