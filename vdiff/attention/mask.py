"""Stage 1 of the block-sparse backends: which (Q block, K block) pairs to compute.

Q is cut into blocks of ``q_block`` tokens and K into blocks of ``k_block`` tokens. The mask
(:func:`predict_block_mask`) is the union of three rules; the first two are SpargeAttn's (Zhang
et al., SpargeAttn, ICML 2025), so it keeps every block SpargeAttn's predictor keeps:

1. Self-similarity: a block whose tokens are not self-similar (mean pairwise cosine similarity
   below ``sim_threshold``) is poorly summarised by its mean, so its whole row (Q block) or
   column (K block) is always computed.
2. Pooled scores: each block is mean-pooled; ``softmax(q̄ · k̄ᵀ · scale + log count)`` ranks the
   K blocks of each Q block, and the mask keeps the fewest K blocks whose pooled mass reaches
   ``cdf_threshold`` (or, with ``topk``, a fixed fraction of them).
3. Sub-block centres (:func:`block_centres`): each block is also summarised by up to
   ``centres`` centres (its mean, then farthest-point seeds, each refined to the mean of the
   tokens nearest to it), so a run of tokens unlike the rest of its block (a dominant run of
   keys that straddles a K-block boundary, or the queries that attend to it) gets a centre of
   its own instead of being averaged away. The estimated mass of K block j for Q centre c is
   ``Σ_{K centres e of j} count_e · exp(c · e · scale)``; every Q centre (a group of similar
   queries, however few) keeps the fewest K blocks whose estimated mass reaches
   ``cdf_threshold`` (with ``topk``: the top fraction of K blocks by the largest share any
   centre of the Q block gives them).

Rule 2 alone averages a run that covers part of a block with the rest of it (on both sides:
the Q block's mean query and the K block's mean key), so pooled scores of a straddling run can
fall below blocks the mean query attends to, and the run's blocks are dropped on every path
that computes exactly the mask (issue 15).
"""

from __future__ import annotations

import math

import torch

from vdiff.attention.checks import per_head

CENTRES = 4
"""centres per block of rule 3: the block's mean and three farthest-point seeds"""


def pool_blocks(x: torch.Tensor, *, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean-pool tokens in blocks and measure how self-similar each block is.

    x (B, H, N, D) -> pooled (B, H, nb, D) fp32, self-similarity (B, H, nb) fp32 (mean cosine
    similarity over pairs of distinct tokens of the block; 1 for a one-token block), and the
    token count of each block (nb,) (the last block may be partial).
    """
    b, h, n, d = x.shape
    nb = math.ceil(n / block)
    xf = x.float()
    if nb * block != n:
        xf = torch.nn.functional.pad(xf, (0, 0, 0, nb * block - n))
    xb = xf.view(b, h, nb, block, d)  # (B, H, nb, block, D)
    counts = torch.full((nb,), float(block), device=x.device)
    counts[-1] = n - (nb - 1) * block
    # NOTE: both block sums in one pass over x, as a (2, block) x (block, D) product per block:
    # row 0 weighs tokens by 1/count (the mean), row 1 by 1/|x| (the sum of unit vectors; padded
    # rows are 0 either way). Sum over pairs i != j of cos(x_i, x_j) = |sum_i x̂_i|² - n.
    inv_norm = torch.linalg.vector_norm(xb, dim=-1).clamp_min_(1e-12).reciprocal_()  # (B, H, nb, block)
    weights = torch.stack([(1.0 / counts)[:, None].expand(nb, block).expand_as(inv_norm), inv_norm], dim=-2)
    sums = torch.matmul(weights, xb)  # (B, H, nb, 2, D)
    pooled = sums[..., 0, :]
    pair_sum = sums[..., 1, :].pow(2).sum(dim=-1) - counts  # (B, H, nb)
    pairs = counts * (counts - 1)
    sim = torch.where(pairs > 0, pair_sum / pairs.clamp_min(1), torch.ones_like(pair_sum))
    return pooled, sim, counts


def block_centres(
    x: torch.Tensor, *, block: int, centres: int = CENTRES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``centres`` centres per block of ``block`` tokens, and how many tokens each stands for.

    x (B, H, N, D) -> centres (B, H, nb, centres, D) fp32 and counts (B, H, nb, centres) fp32
    (0 for an unused centre; each block's counts sum to its token count). Seeds: the block's
    mean, then, ``centres - 1`` times, the token farthest from every seed so far (a token unlike
    the rest of its block is the first picked); each token then joins its nearest seed, and each
    centre is the mean of its tokens (one k-means step).
    """
    b, h, n, d = x.shape
    nb = math.ceil(n / block)
    xf = x.float()
    if nb * block != n:
        xf = torch.nn.functional.pad(xf, (0, 0, 0, nb * block - n))
    xb = xf.view(b, h, nb, block, d)  # (B, H, nb, block, D)
    real = (torch.arange(nb * block, device=x.device) < n).view(nb, block)  # (nb, block)
    mean = xb.sum(dim=3) / real.sum(dim=-1).clamp_min(1)[:, None]  # (B, H, nb, D); padding is 0
    sq = torch.linalg.vector_norm(xb, dim=-1).square_()  # (B, H, nb, block)

    def dist2(c: torch.Tensor) -> torch.Tensor:
        """Squared distance of every token to c (B, H, nb, D): (B, H, nb, block); padding -inf."""
        d2 = sq - 2.0 * torch.einsum("bhnkd,bhnd->bhnk", xb, c) + c.pow(2).sum(dim=-1, keepdim=True)
        return d2.masked_fill(~real, float("-inf"))

    seeds = [mean]
    far = dist2(mean)  # (B, H, nb, block): distance to the nearest seed so far
    for _ in range(centres - 1):
        idx = far.argmax(dim=-1)  # (B, H, nb)
        seed = xb.gather(3, idx[..., None, None].expand(b, h, nb, 1, d)).squeeze(3)  # (B, H, nb, D)
        seeds.append(seed)
        far = torch.minimum(far, dist2(seed))
    c = torch.stack(seeds, dim=3)  # (B, H, nb, m, D)
    # NOTE: |x|² is the same for every centre of a token, so the nearest centre minimises |c|² - 2 x·c.
    xc = torch.matmul(xb, c.transpose(-1, -2))  # (B, H, nb, block, m)
    d2 = c.pow(2).sum(dim=-1).unsqueeze(-2) - 2.0 * xc
    # NOTE: a seed picked twice (blocks with fewer distinct tokens than centres) loses every tie
    # to its first copy (argmin takes the first), so the copy keeps count 0 and is ignored.
    onehot = torch.nn.functional.one_hot(d2.argmin(dim=-1), len(seeds)).float() * real[..., None]
    counts = onehot.sum(dim=3)  # (B, H, nb, m)
    cent = torch.matmul(onehot.transpose(-1, -2), xb) / counts.clamp_min(1.0)[..., None]  # (B, H, nb, m, D)
    return cent, counts


def _keep_cdf(p: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Per row of p (..., nk), the fewest largest entries whose sum reaches tau (all when tau >= 1)."""
    p_sorted, order = p.sort(dim=-1, descending=True)
    before = p_sorted.cumsum(dim=-1) - p_sorted  # mass of the blocks ranked above
    keep_sorted = (before < tau) | (tau >= 1.0)
    return torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)


def _keep_top(score: torch.Tensor, n: int) -> torch.Tensor:
    """Per row of score (..., nk), its ``n`` largest entries."""
    idx = score.topk(n, dim=-1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, idx, True)


CUT_STEP = 0.125
"""log-weight resolution of rule 3's cut: it keeps at most keys this much lighter than needed"""
_CUT_DEPTH = 192  # NOTE: steps below a row's heaviest key (24 in log-weight, a factor e^-24)


def _keep_heaviest(log_w: torch.Tensor, share: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Per row of (..., n): every entry but the lightest ones whose shares sum to at most 1 - tau.

    ``log_w``: each entry's log-weight per key (-inf: none); ``share``: its share of the row
    (each row sums to 1); ``tau`` broadcasts against the rows. Entries are cut in whole steps of
    :data:`CUT_STEP` below the row's heaviest, so the kept set contains the exact one (sorting
    every row cost ~10x more at N = 16384).
    """
    top = log_w.amax(dim=-1, keepdim=True)
    depth = ((top - log_w) / CUT_STEP).nan_to_num_(nan=_CUT_DEPTH - 1, posinf=_CUT_DEPTH - 1)
    depth = depth.clamp_(0, _CUT_DEPTH - 1).long()  # (..., n): steps below the heaviest
    hist = torch.zeros(*log_w.shape[:-1], _CUT_DEPTH, device=log_w.device).scatter_add_(-1, depth, share)
    light = hist.flip(-1).cumsum(dim=-1).flip(-1)  # (..., steps): share at this depth or lighter
    cut = (light > 1.0 - tau).sum(dim=-1, keepdim=True)  # the steps kept, from the heaviest
    return (depth < cut) | (tau >= 1.0)


def predict_block_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    scale: float,
    q_block: int = 128,
    k_block: int = 64,
    cdf_threshold: float | torch.Tensor = 0.99,
    topk: float | None = None,
    sim_threshold: float = 0.3,
    centres: int = CENTRES,
) -> torch.Tensor:
    """Stage 1: which (Q block, K block) pairs to compute; bool (B, H, nqb, nkb).

    The union of the three rules of this module's docstring. ``cdf_threshold`` is a float or a
    per-head (H,) tensor; ``topk`` (a fraction in (0, 1]) replaces it when given (the mask then
    keeps at least that fraction of each row, at most twice it, besides always-computed rows and
    columns). ``centres=1`` leaves rule 3 out: SpargeAttn's predictor alone.
    """
    if topk is not None and not 0.0 < topk <= 1.0:
        raise ValueError(f"sparse option topk must be a fraction in (0, 1], got {topk}")
    if not isinstance(centres, int) or centres < 1:
        raise ValueError(f"predict_block_mask: centres must be an integer >= 1, got {centres!r}")
    qp, q_sim, _ = pool_blocks(q, block=q_block)
    kp, k_sim, k_counts = pool_blocks(k, block=k_block)
    b, h, nq, d = qp.shape
    nk = kp.shape[2]
    q_free = q_sim < sim_threshold  # (B, H, nq): row always computed
    k_free = k_sim < sim_threshold  # (B, H, nk): column always computed
    tau = None if topk is not None else per_head(cdf_threshold, heads=h, device=q.device)
    keep_n = None if topk is None else max(1, math.ceil(topk * nk))
    # Rule 2. NOTE: a pooled K block stands for `count` tokens, hence + log(count) (matters for
    # the last one).
    s = torch.matmul(qp, kp.transpose(-1, -2)) * scale + k_counts.log()  # (B, H, nq, nk)
    s = s.masked_fill(k_free[:, :, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num_(0.0)  # rows with every column free: all 0
    mask = _keep_top(p, keep_n) if keep_n is not None else _keep_cdf(p, tau)
    if centres > 1:
        # Rule 3: every Q centre against every K centre; a K centre stands for `count` keys of
        # (estimated) equal weight.
        qc, qn = block_centres(q, block=q_block, centres=centres)  # (B, H, nq, m, D), (B, H, nq, m)
        kc, kn = block_centres(k, block=k_block, centres=centres)  # (B, H, nk, m, D), (B, H, nk, m)
        m = qc.shape[3]
        per_key = torch.matmul(qc.reshape(b, h, nq * m, d), kc.reshape(b, h, nk * m, d).transpose(-1, -2))
        skip = (kn == 0) | k_free[..., None]  # (B, H, nk, m): unused centres, free columns
        per_key = (per_key * scale).masked_fill(skip.reshape(b, h, 1, nk * m), float("-inf"))
        share = torch.softmax(per_key + kn.reshape(b, h, 1, nk * m).log(), dim=-1).nan_to_num_(0.0)
        used = (qn > 0).reshape(b, h, nq * m, 1)  # Q centres that hold queries
        if keep_n is not None:
            # NOTE: a block ranks by its heaviest key under any Q centre.
            heaviest = (share / kn.reshape(b, h, 1, nk * m).clamp_min(1.0)).masked_fill(~used, -1.0)
            heaviest = heaviest.view(b, h, nq, m, nk, m).amax(dim=(3, 5))  # (B, H, nq, nk)
            mask |= _keep_top(heaviest, keep_n)
        else:
            keep_c = _keep_heaviest(per_key, share, tau) & ~skip.reshape(b, h, 1, nk * m) & used
            mask |= keep_c.view(b, h, nq, m, nk, m).any(dim=5).any(dim=3)
    return mask | q_free[..., None] | k_free[:, :, None, :]
