"""Adversarial inputs for the block-mask predictor: dominant runs of keys anywhere (issue 15).

The background is a (frames, height, width) token grid of 8x8 patches: every token's q and k
point along its patch's random direction (length 10, plus noise), so each query attends to its
own patch and the predicted mask is sparse. Then, per head, a pattern: a run of queries (any
start, any length) is replaced by 6 times a direction (plus noise), and one or more runs of keys
(any start, any width) get ``c`` times their own direction added, with ``c`` the smallest that
puts at least :data:`SHARE` of every such query's attention on its runs. Nothing is aligned with
the Q or K blocks unless a pattern says so. V is Gaussian, so a row's output is the mean of a
few random vectors and shows any key it loses.

The affected queries carry noise (:data:`NOISE` per channel) against background keys of length
10, so a single query's share of a background block differs from its group's estimate by up to
about e^±1: the mask's cdf budget (1% of the estimated mass) costs such rows up to ~4% of their
diffuse background mass, but never a key of a run.
"""

from __future__ import annotations

import math

import torch

from vdiff.attention.token_order import tile_order

SHARE = 0.96
"""the smallest share of an affected query's attention that its runs hold"""
COS_MIN = 0.999
"""the cosine each affected row's output must reach against fp64 dense attention"""
NOISE = 0.3
"""noise per channel of the affected queries"""

Pattern = tuple[int, int, list[tuple[int, int]]]
"""(first query, number of queries, [(first key, width), ...]) of one head"""


def background(
    *, heads: int, grid: tuple[int, int, int], order: str, head_dim: int = 64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (1, heads, T*H*W, head_dim) fp32 of 8x8 patches, in ``order`` ("raster" or "tiles")."""
    g = torch.Generator().manual_seed(seed)
    t, h, w = grid
    tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    patch = ((tt * math.ceil(h / 8) + yy // 8) * math.ceil(w / 8) + xx // 8).reshape(-1)  # (N,) raster
    dirs = torch.nn.functional.normalize(
        torch.randn(heads, int(patch.max()) + 1, head_dim, generator=g), dim=-1
    )
    base = 10.0 * dirs[:, patch]  # (H, N, D)
    q = base + 0.3 * torch.randn(base.shape, generator=g)
    k = base + 0.3 * torch.randn(base.shape, generator=g)
    v = torch.randn(base.shape, generator=g)
    if order == "tiles":
        idx = tile_order(grid, tile=8)
        q, k, v = (x[:, idx] for x in (q, k, v))
    elif order != "raster":
        raise ValueError(f"order must be raster or tiles, got {order!r}")
    return tuple(x[None].contiguous() for x in (q, k, v))  # type: ignore[return-value]


def plant(
    q: torch.Tensor, k: torch.Tensor, patterns: list[Pattern], *, share: float = SHARE, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plant one pattern per head (``patterns[h]``) into copies of q, k (1, H, N, D).

    Returns q, k and ``rows`` (H, M) int64: each head's affected queries, padded with -1.
    """
    g = torch.Generator().manual_seed(seed)
    _, heads, n, d = q.shape
    if len(patterns) != heads:
        raise ValueError(f"plant: {len(patterns)} patterns for {heads} heads")
    q = q.clone()
    width = max(nq for _, nq, _ in patterns)
    rows = torch.full((heads, width), -1, dtype=torch.long)
    keys = torch.zeros(heads, n, dtype=torch.bool)
    bump = torch.zeros(heads, n, d)  # (H, N, D): unit directions of the key runs
    for h, (q0, nq, runs) in enumerate(patterns):
        dirs = torch.nn.functional.normalize(torch.randn(len(runs), d, generator=g), dim=-1)  # (R, D)
        q_dir = torch.nn.functional.normalize(dirs.sum(dim=0), dim=0)
        q[0, h, q0 : q0 + nq] = 6.0 * q_dir + NOISE * torch.randn(nq, d, generator=g)
        rows[h, :nq] = torch.arange(q0, q0 + nq)
        for (r0, w), u in zip(runs, dirs, strict=True):
            bump[h, r0 : r0 + w] += u
            keys[h, r0 : r0 + w] = True
    # NOTE: bisection per head on the runs' strength c (the held share grows with c), over the
    # affected rows only; the scores are s0 + c * s1.
    q_rows = gather_rows(q, rows)[0] / math.sqrt(d)  # (H, M, D)
    s0 = torch.matmul(q_rows, k[0].transpose(-1, -2))  # (H, M, N)
    s1 = torch.matmul(q_rows, bump.transpose(-1, -2))
    lo, hi = torch.zeros(heads), torch.full((heads,), 400.0)
    for _ in range(22):
        c = (lo + hi) / 2
        ok = _held(s0 + c[:, None, None] * s1, keys, rows) >= share  # (H,)
        hi, lo = torch.where(ok, c, hi), torch.where(ok, lo, c)
    k = k + (hi[:, None, None] * bump)[None]
    return q.contiguous(), k.contiguous(), rows


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x (1, H, N, D) at ``rows`` (H, M) (padding -1 reads row 0): (1, H, M, D)."""
    idx = rows.clamp_min(0)[None, :, :, None].expand(1, *rows.shape, x.shape[-1])
    return x.gather(2, idx)


def _held(s: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Smallest share (H,) of an affected row's attention (scores s (H, M, N)) on ``keys`` (H, N)."""
    held = (torch.softmax(s, dim=-1) * keys[:, None, :]).sum(dim=-1)  # (H, M)
    return held.masked_fill(rows < 0, 1.0).amin(dim=-1)


def held_share(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, patterns: list[Pattern]) -> torch.Tensor:
    """The smallest share (H,) of an affected row's attention on its head's runs (fp64 maths)."""
    keys = torch.zeros(k.shape[1], k.shape[2], dtype=torch.bool)
    for h, (_, _, runs) in enumerate(patterns):
        for r0, w in runs:
            keys[h, r0 : r0 + w] = True
    q_rows = gather_rows(q, rows)[0].double() / math.sqrt(q.shape[-1])  # (H, M, D)
    return _held(torch.matmul(q_rows, k[0].double().transpose(-1, -2)), keys, rows)


def reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """fp64 dense attention (1, H, M, D) of the affected ``rows`` (H, M) of q (1, H, N, D)."""
    s = torch.matmul(gather_rows(q, rows).double(), k.double().transpose(-1, -2)) * scale  # (1, H, M, N)
    return torch.matmul(torch.softmax(s, dim=-1), v.double())


def row_cosine(out: torch.Tensor, ref: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Cosine (H, M) of each affected row's output (``out`` (1, H, N, D)) against ``ref`` (1, H, M, D);
    1 for padding."""
    o, r = gather_rows(out, rows)[0].double(), ref[0]
    cos = (o * r).sum(dim=-1) / (o.norm(dim=-1) * r.norm(dim=-1)).clamp_min(1e-30)
    return cos.masked_fill(rows < 0, 1.0)
