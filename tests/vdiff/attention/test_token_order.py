"""Tile order of a token grid (against a loop reference) and AttentionConfig's token_order keys."""

from __future__ import annotations

import math

import pytest
import torch

from vdiff.attention import AttentionConfig
from vdiff.attention.token_order import inverse_order, tile_order


def _loop_reference(grid: tuple[int, int, int], tile: int) -> list[int]:
    """Frame, tile row, tile column, then raster inside the (possibly ragged) tile, as nested loops."""
    t, h, w = grid
    out = []
    for f in range(t):
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                for y in range(y0, min(y0 + tile, h)):
                    out.extend(f * h * w + y * w + x for x in range(x0, min(x0 + tile, w)))
    return out


@pytest.mark.parametrize(
    ("grid", "tile"), [((2, 30, 52), 8), ((1, 5, 3), 8), ((1, 5, 3), 2), ((3, 16, 16), 8), ((2, 7, 9), 4)]
)
def test_tile_order_is_a_permutation_matching_the_loop_reference(grid, tile) -> None:
    idx = tile_order(grid, tile=tile)
    n = math.prod(grid)
    assert idx.dtype == torch.int64 and idx.shape == (n,)
    assert sorted(idx.tolist()) == list(range(n))  # every token exactly once
    assert idx.tolist() == _loop_reference(grid, tile)
    inv = inverse_order(idx)
    x = torch.randn(2, n, 3)
    assert torch.equal(x[:, idx][:, inv], x)


def test_ragged_tiles_by_hand() -> None:
    # a 5x3 frame in 2x2 tiles: (2x2, 2x1) / (2x2, 2x1) / (1x2, 1x1)
    assert tile_order((1, 5, 3), tile=2).tolist() == [0, 1, 3, 4, 2, 5, 6, 7, 9, 10, 8, 11, 12, 13, 14]
    # one tile covers a whole 5x3 frame: raster order
    assert tile_order((2, 5, 3), tile=8).tolist() == list(range(30))


def test_every_64_token_run_of_a_divisible_grid_is_one_8x8_tile() -> None:
    t, h, w = 3, 16, 24
    idx = tile_order((t, h, w), tile=8)
    f, y, x = idx // (h * w), (idx % (h * w)) // w, idx % w  # raster coordinates of each reordered token
    for run in range(idx.numel() // 64):
        sl = slice(64 * run, 64 * (run + 1))
        frame, tile_row, tile_col = run // 6, (run % 6) // 3, run % 3  # 2 x 3 tiles per frame
        assert (f[sl] == frame).all()
        assert (y[sl] // 8 == tile_row).all() and (x[sl] // 8 == tile_col).all()
        assert idx[sl].unique().numel() == 64
        assert (idx[sl].diff() > 0).all()  # raster order inside the tile


def test_tile_order_device_and_errors() -> None:
    assert tile_order((1, 4, 4), tile=2, device="meta").is_meta
    with pytest.raises(ValueError, match="positive sizes"):
        tile_order((1, 0, 4), tile=2)
    with pytest.raises(ValueError, match="tile >= 1"):
        tile_order((1, 4, 4), tile=0)


def test_auto_token_order_follows_the_backends() -> None:
    assert AttentionConfig().resolved_token_order() == "raster"
    assert AttentionConfig(backend="sage").resolved_token_order() == "raster"
    assert AttentionConfig(backend="sparse").resolved_token_order() == "tiles"
    assert AttentionConfig(per_layer={3: "sparse_sage"}).resolved_token_order() == "tiles"
    assert AttentionConfig().resolved_token_order(also=("sparse_sage",)) == "tiles"
    assert AttentionConfig(backend="sparse", token_order="raster").resolved_token_order() == "raster"
    assert AttentionConfig(token_order="tiles").resolved_token_order() == "tiles"


def test_bad_token_order_keys_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"token_order must be one of raster, tiles, auto, got 'tile'"):
        AttentionConfig(token_order="tile").validate()
    for tile in (0, 2.5, True):
        with pytest.raises(ValueError, match=r"attention\.tile must be an integer >= 1"):
            AttentionConfig(tile=tile).validate()
    with pytest.raises(ValueError, match=r"options\.grid reorders raster tokens"):
        AttentionConfig(backend="sparse", options={"grid": [1, 8, 8]}).validate()
    AttentionConfig(backend="sparse", token_order="raster", options={"grid": [1, 8, 8]}).validate()
