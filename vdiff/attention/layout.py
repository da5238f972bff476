"""Block layout shared by the PyTorch execution paths: tokens cut into blocks, rows into chunks."""

from __future__ import annotations

import math

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
