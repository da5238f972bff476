"""Token orders of a video DiT's (frames, height, width) token grid.

The patch embedding lays tokens out in raster order (t, y, x). Block-sparse attention pools Q
and K in runs of consecutive tokens, and a run of 64 raster tokens is a thin strip of one frame
row, poorly summarised by its mean. In tile order each frame is cut into ``tile`` x ``tile``
spatial tiles, tiles in raster order, tokens inside a tile in raster order; a run of 64 tokens
is then one square 8x8 tile. :func:`tile_order` gives the permutation, any grid allowed.
"""

from __future__ import annotations

import functools
import math

import torch

TOKEN_ORDERS = ("raster", "tiles", "auto")
"""values of ``AttentionConfig.token_order``"""

SPARSE_BACKENDS = ("sparse", "sparse_sage")
"""backends whose block mask gains from tile order ("auto" picks tiles for them)"""


def tile_order(
    grid: tuple[int, int, int] | list[int], *, tile: int = 8, device: torch.device | str | None = None
) -> torch.Tensor:
    """Raster indices (N,) int64 in tile order: ``x[:, idx]`` reorders raster tokens (B, N, ...) into tiles.

    Order: frame, tile row, tile column, then raster inside the tile. Where ``tile`` does not
    divide the height or width, the last tile row or column is ragged (fewer rows or columns);
    every token appears exactly once.
    """
    t, h, w = (int(x) for x in grid)
    if min(t, h, w) <= 0 or tile <= 0:
        raise ValueError(
            f"tile_order needs a grid of positive sizes and tile >= 1, got grid={tuple(grid)}, tile={tile}"
        )
    return _tile_order_cpu(t, h, w, int(tile)).to(device)


@functools.lru_cache(maxsize=16)
def _tile_order_cpu(t: int, h: int, w: int, s: int) -> torch.Tensor:
    # NOTE: cached because the model asks for the same grid at every forward; .to(device) copies
    # it (or returns it as is on CPU, so callers must not modify the result in place).
    y = torch.arange(h).view(1, h, 1)
    x = torch.arange(w).view(1, 1, w)
    f = torch.arange(t).view(t, 1, 1)
    tiles_per_row = math.ceil(w / s)
    tile_index = (f * math.ceil(h / s) + y // s) * tiles_per_row + x // s  # (T, H, W)
    # NOTE: a unique sort key per token: its tile, then its row and column inside the tile.
    key = (tile_index * s + y % s) * s + x % s  # (T, H, W)
    return key.reshape(-1).argsort()


def inverse_order(order: torch.Tensor) -> torch.Tensor:
    """The permutation ``inv`` (N,) with ``inv[order] = arange(N)``: ``x[:, order][:, inv] == x``."""
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=order.device)
    return inv


def tile_permutation(grid: tuple[int, int, int] | list[int], *, tokens: int, k_block: int) -> torch.Tensor:
    """Token order that makes every K block one square tile of a frame (SpargeAttn-style reordering).

    ``grid`` is (frames, height, width) of tokens laid out in raster order (t, y, x), as a video
    DiT does. Returns idx (tokens,) with ``x[:, :, idx]`` in tile order (:func:`tile_order` with
    s x s tiles, s² = k_block; ragged tiles at the edges where s does not divide the height or
    width); a Q block of 128 tokens is then two side-by-side 8x8 tiles instead of a 4-row strip,
    so its mean is a good summary. The ``grid`` option of the sparse backends uses it.
    """
    t, h, w = (int(x) for x in grid)
    s = math.isqrt(k_block)
    if s * s != k_block:
        raise ValueError(f"sparse option grid needs a square k_block (e.g. 64 = 8x8 tiles), got {k_block}")
    if t * h * w != tokens:
        raise ValueError(f"sparse option grid={tuple(grid)} holds {t * h * w} tokens, q and k have {tokens}")
    return tile_order((t, h, w), tile=s)
