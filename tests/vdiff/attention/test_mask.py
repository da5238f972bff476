"""The block-mask predictor keeps any dominant run of keys wherever it sits, on every path (issue 15).

Adversarial inputs (tests/vdiff/attention/adversarial.py): runs of keys at every offset modulo
the K block, widths from one token to two blocks, several runs per row, a different pattern per
head, queries not aligned with the Q blocks either, in raster and in tile token order. Each
affected row's output must reach cosine 0.999 against fp64 dense attention. (The Triton
kernel's share of these checks is in test_triton.py.)
"""

from __future__ import annotations

import pytest
import torch

from tests.vdiff.attention.adversarial import (
    COS_MIN,
    SHARE,
    Pattern,
    background,
    gather_rows,
    held_share,
    plant,
    reference,
    row_cosine,
)
from vdiff.attention import attention, native_cpu
from vdiff.attention.execute import block_sparse_attention, computed_mask
from vdiff.attention.mask import block_centres, predict_block_mask

GRID = (2, 16, 16)  # 512 tokens: 4 Q blocks of 128, 8 K blocks of 64 (the default blocks)
SCALE = 0.125  # head dim 64
WIDTHS = (1, 2, 31, 64, 65, 128)  # one token to two K blocks
SAGE_COS_MIN = 0.995
NATIVE = native_cpu.unavailable_reason() is None
PATHS = ("tiled", "fused", "native") if NATIVE else ("tiled", "fused")
"""the CPU paths: exact mask (tiled), widened (fused), the C kernel (native, INT8 only) where it builds"""
"""INT8 Q·Kᵀ alone (sage, every block) costs a row whose attention sits on a few keys up to ~3e-3"""


def _sweep(width: int) -> list[Pattern]:
    """64 heads: a run of ``width`` keys at every offset 0..63 modulo the K block, each attended
    by 64 queries whose start moves with the head (rarely on the Q-block grid)."""
    return [((37 * off) % 448, 64, [(64 * (2 + off % 3) + off, width)]) for off in range(64)]


def _mixed() -> list[Pattern]:
    """Eight heads, each a different pattern: several runs per row, single queries, whole Q blocks."""
    return [
        (100, 64, [(33, 64)]),  # the example: 64 keys off the K-block grid, 64 queries
        (0, 1, [(300, 1)]),  # one query, one key
        (128, 128, [(191, 128)]),  # a whole Q block; a run of two blocks straddling three
        (60, 16, [(10, 20), (150, 20), (420, 20)]),  # three runs per row, none aligned
        (200, 96, [(250, 7), (257, 7)]),  # two runs side by side, different directions
        (5, 200, [(500, 12)]),  # queries across two Q-block boundaries, a run in the last block
        (300, 64, [(64, 64)]),  # an aligned run, for contrast
        (450, 62, [(1, 30), (97, 30), (255, 30), (383, 30)]),  # four runs per row
    ]


def _case(
    order: str, patterns: list[Pattern], *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (1, H, 512, 64) with ``patterns`` planted, and the affected rows (H, M)."""
    q, k, v = background(heads=len(patterns), grid=GRID, order=order, seed=seed)
    q, k, rows = plant(q, k, patterns, seed=seed + 1)
    assert bool((held_share(q, k, rows, patterns) >= SHARE - 1e-3).all())  # the runs dominate their rows
    return q, k, v, rows


@pytest.mark.parametrize("order", ["raster", "tiles"])
@pytest.mark.parametrize("width", WIDTHS)
def test_dominant_run_at_every_offset_is_kept_on_the_torch_paths(order: str, width: int) -> None:
    q, k, v, rows = _case(order, _sweep(width), seed=width)
    ref = reference(q, k, v, rows, scale=SCALE)
    mask = predict_block_mask(q, k, scale=SCALE)
    assert mask.float().mean() < 0.7  # the mask does skip blocks: the test is not vacuous
    for kernel in PATHS:
        _check_rows(q, k, v, rows, ref, kernel=kernel, where=f"width {width}, offset = head")


@pytest.mark.parametrize("order", ["raster", "tiles"])
def test_several_runs_and_a_different_pattern_per_head(order: str) -> None:
    patterns = _mixed()
    q, k, v, rows = _case(order, patterns, seed=7)
    ref = reference(q, k, v, rows, scale=SCALE)
    for kernel in PATHS:
        _check_rows(q, k, v, rows, ref, kernel=kernel, where="mixed patterns")


def _check_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor,
    ref: torch.Tensor,
    *,
    kernel: str,
    where: str,
) -> None:
    """Every affected row of ``sparse`` at cosine >= COS_MIN against fp64 dense attention; of
    ``sparse_sage`` at COS_MIN against ``sage`` (every block, the same INT8 scores: so the mask
    costs it what it costs ``sparse``) and at SAGE_COS_MIN against fp64 dense attention. The
    native kernel computes INT8 scores only, so it runs ``sparse_sage`` and ``sage``."""
    if kernel != "native":
        cos = row_cosine(attention(q, k, v, backend="sparse", kernel=kernel), ref, rows)  # (H, M)
        bad = (cos.amin(dim=-1) < COS_MIN).nonzero().flatten().tolist()
        assert not bad, ("sparse", kernel, where, "heads", bad, float(cos.min()))
    out = attention(q, k, v, backend="sparse_sage", kernel=kernel)
    every_block = attention(q, k, v, backend="sage", kernel=kernel)
    for against, bound in ((every_block.double(), COS_MIN), (ref, SAGE_COS_MIN)):
        if against is not ref:
            against = gather_rows(against, rows)
        cos = row_cosine(out, against, rows)
        bad = (cos.amin(dim=-1) < bound).nonzero().flatten().tolist()
        assert not bad, ("sparse_sage", kernel, where, "heads", bad, float(cos.min()), bound)


def test_spargeattn_rules_alone_drop_the_straddling_run() -> None:
    # Regression (issue 15): SpargeAttn's rules alone (centres=1, the predictor before the fix)
    # average a straddling run away with the rest of its blocks, on the exact-mask path.
    q, k, v, rows = _case("raster", _sweep(64), seed=64)
    ref = reference(q, k, v, rows, scale=SCALE)
    old = predict_block_mask(q, k, scale=SCALE, centres=1)
    new = predict_block_mask(q, k, scale=SCALE)
    assert bool((old <= new).all())  # the new mask keeps every block the old one keeps
    lost, _ = block_sparse_attention(q, k, v, old, scale=SCALE, kernel="tiled", need_lse=False)
    kept, _ = block_sparse_attention(q, k, v, new, scale=SCALE, kernel="tiled", need_lse=False)
    assert float(row_cosine(lost, ref, rows).min()) < 0.9
    assert float(row_cosine(kept, ref, rows).min()) >= COS_MIN


@pytest.mark.parametrize("order", ["raster", "tiles"])
def test_every_path_computes_the_predicted_blocks(order: str) -> None:
    # One mask for all paths: tiled and (unwidened) fused compute exactly it, the widened fused
    # path a superset (computed_mask); each output is softmax attention over those blocks.
    q, k, v, rows = _case(order, _mixed(), seed=3)
    mask = predict_block_mask(q, k, scale=SCALE)
    wide = computed_mask(mask, path="fused")
    assert torch.equal(computed_mask(mask, path="tiled"), mask) and bool((mask <= wide).all())
    ref = reference(q, k, v, rows, scale=SCALE)
    for kernel, widen, blocks in (("tiled", True, mask), ("fused", False, mask), ("fused", True, wide)):
        out, _ = block_sparse_attention(
            q, k, v, mask, scale=SCALE, kernel=kernel, widen=widen, need_lse=False
        )
        torch.testing.assert_close(out, _masked_dense(q, k, v, blocks), atol=1e-5, rtol=1e-4)
        assert float(row_cosine(out, ref, rows).min()) >= COS_MIN, (kernel, widen)
    if NATIVE:
        # INT8 scores: every row against fp64 attention over exactly the mask, and against the
        # tiled INT8 path (same integers; P rounded to bf16 before or after normalising)
        kw = {"scale": SCALE, "quantize": True, "pv_dtype": "bf16", "need_lse": False}
        out, _ = block_sparse_attention(q, k, v, mask, kernel="native", **kw)
        tiled, _ = block_sparse_attention(q, k, v, mask, kernel="tiled", **kw)
        exact = _masked_dense(q, k, v, mask).double()
        cos_native = torch.nn.functional.cosine_similarity(out.double(), exact, dim=-1)  # (1, H, N)
        cos_tiled = torch.nn.functional.cosine_similarity(tiled.double(), exact, dim=-1)
        # INT8 costs the sharpest background rows up to ~0.006 on both paths alike
        assert float(cos_native.min()) >= float(cos_tiled.min()) - 1e-3
        assert float(torch.nn.functional.cosine_similarity(out, tiled, dim=-1).min()) >= COS_MIN


def _masked_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax attention (1, H, N, D), in fp64, over the 128 x 64 blocks of ``mask`` (1, H, nqb, nkb)."""
    n_q, n_k = q.shape[2], k.shape[2]
    keep = mask.repeat_interleave(128, 2)[:, :, :n_q].repeat_interleave(64, 3)[..., :n_k]  # (1, H, Nq, Nk)
    s = (torch.matmul(q.double(), k.double().transpose(-1, -2)) * SCALE).masked_fill(~keep, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v.double()).float()


def test_block_centres_separate_a_run_from_the_rest_of_its_block() -> None:
    x = torch.zeros(1, 1, 70, 4)
    x[0, 0, :, 0] = 1.0  # every token along e0 ...
    x[0, 0, 20:30, 1] = 5.0  # ... a run of 10 also along e1
    x[0, 0, 41, 2] = 9.0  # ... and one token along e2
    cent, counts = block_centres(x, block=64)  # blocks of 64 and 6 tokens
    assert cent.shape == (1, 1, 2, 4, 4) and counts.shape == (1, 1, 2, 4)
    assert counts.sum(dim=-1).tolist() == [[[64.0, 6.0]]]
    got = {
        (round(float(n)), tuple(c.round(decimals=3).tolist())) for c, n in zip(cent[0, 0, 0], counts[0, 0, 0])
    }
    assert (10, (1.0, 5.0, 0.0, 0.0)) in got and (1, (1.0, 0.0, 9.0, 0.0)) in got
    assert (53, (1.0, 0.0, 0.0, 0.0)) in got
    # the partial block of 6 identical tokens: one centre holds them all, the copies hold none
    assert sorted(counts[0, 0, 1].tolist()) == [0.0, 0.0, 0.0, 6.0]


def test_predicted_mask_is_a_superset_of_spargeattns(video_qkv) -> None:
    q, k, _ = video_qkv
    for opts in ({"cdf_threshold": 0.5}, {"cdf_threshold": 0.9}, {"topk": 0.2}):
        old = predict_block_mask(q, k, scale=SCALE, centres=1, **opts)
        new = predict_block_mask(q, k, scale=SCALE, **opts)
        assert bool((old <= new).all()), opts
        assert float(new.float().mean()) < 0.8, opts  # smooth inputs: still sparse
    with pytest.raises(ValueError, match="centres"):
        predict_block_mask(q, k, scale=SCALE, centres=0)
