"""Block layout shared by the PyTorch execution paths: tokens cut into blocks, rows into chunks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

TILE_ELEMS = 1 << 22
"""largest score tile (elements) of one chunk"""
# NOTE: a chunk's score tile holds at most this many elements (16 MiB in fp32): large enough that
# each batched op amortises its dispatch (and, on a busy machine, its thread start-up), small
# enough to stay bounded at any sequence length.


def to_blocks(x: torch.Tensor, *, block: int) -> torch.Tensor:
    """(B, H, N, D) -> (B*H, ceil(N / block), block, D), zero-padded at the end."""
    b, h, n, d = x.shape
    nb = math.ceil(n / block)
    if nb * block != n:
        x = torch.nn.functional.pad(x, (0, 0, 0, nb * block - n))
    return x.reshape(b * h, nb, block, d)


def chunk_rows(
    counts: torch.Tensor, *, elems_per_block: int
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, int]]]:
    """Rows sorted by kept-block count (descending) and cut into chunks of at most :data:`TILE_ELEMS`.

    Returns the order (R,) and, per chunk, its rows (G,) and their largest count c.
    """
    order = counts.argsort(descending=True, stable=True)  # (R,)
    sorted_counts = counts[order].tolist()
    chunks, start = [], 0
    while start < len(sorted_counts):
        c = int(sorted_counts[start])
        g = max(1, min(TILE_ELEMS // (elems_per_block * c), len(sorted_counts) - start))
        chunks.append((order[start : start + g], c))
        start += g
    return order, chunks


@dataclass
class BlockChunk:
    """One chunk of mask rows and the K blocks each keeps (:func:`block_chunks`)."""

    rows: torch.Tensor
    """(G,) indices of the chunk's rows into the (B*H*rows_per_head) rows"""
    width: int
    """c: the largest kept-block count in the chunk; every row is padded to it"""
    heads: torch.Tensor
    """(G,) the (batch x head) index of each row"""
    cols: torch.Tensor
    """(G, c) kept K-block columns of each row, ascending, then padding (dropped columns)"""
    valid: torch.Tensor
    """(G, c) bool: False for the padding after each row's own count"""
    flat: torch.Tensor
    """(G*c,) indices of those K blocks into the (B*H*nk) K blocks"""


def block_chunks(
    rows_mask: torch.Tensor, *, rows_per_head: int, elems_per_block: int
) -> tuple[torch.Tensor, Iterator[BlockChunk]]:
    """The kept K blocks of each row of ``rows_mask`` (B*H*rows_per_head, nk), in chunks.

    Rows are sorted by kept count and cut by :func:`chunk_rows`. Returns that order (R,) and the
    chunks, each a :class:`BlockChunk`, so the execution paths gather K/V blocks alike.
    """
    nk = rows_mask.shape[1]
    counts = rows_mask.sum(dim=-1)  # (R,)
    # NOTE: kept columns first, in ascending order (stable sort), then the dropped ones.
    cols_sorted = rows_mask.to(torch.int8).argsort(dim=-1, descending=True, stable=True)  # (R, nk)
    order, chunks = chunk_rows(counts, elems_per_block=elems_per_block)

    def gen() -> Iterator[BlockChunk]:
        for sel, c in chunks:
            heads = torch.div(sel, rows_per_head, rounding_mode="floor")  # (G,)
            cols = cols_sorted.index_select(0, sel)[:, :c]  # (G, c)
            valid = torch.arange(c, device=rows_mask.device) < counts.index_select(0, sel)[:, None]  # (G, c)
            flat = (heads[:, None] * nk + cols).view(-1)  # (G*c,)
            yield BlockChunk(rows=sel, width=c, heads=heads, cols=cols, valid=valid, flat=flat)

    return order, gen()
