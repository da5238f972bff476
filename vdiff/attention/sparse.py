"""``sparse`` and ``sparse_sage``: SpargeAttn-style block-sparse attention with a mask predicted
on every call (Zhang et al., SpargeAttn, ICML 2025).

Stage 1, the mask (:func:`predict_block_mask`): Q is cut into blocks of ``q_block`` tokens and K
into blocks of ``k_block`` tokens; each block is mean-pooled. A block whose tokens are not
self-similar (mean pairwise cosine similarity below ``sim_threshold``) is poorly summarised by
its mean, so its whole row (Q block) or column (K block) is always computed. The pooled scores
``softmax(q̄ · k̄ᵀ · scale)`` rank the K blocks of each Q block; the mask keeps the fewest K blocks
whose pooled mass reaches ``cdf_threshold`` (or, with ``topk``, a fixed fraction of them).

Stage 2, the attention (:func:`block_sparse_attention`): exact softmax over the kept blocks; with
``pv_threshold`` (λ < 0) the P·V product also skips a kept K block when, for every row of the Q
block, that block's largest score is below the row's maximum by more than |λ| (its weights are
all < e^λ of the row's largest weight). SpargeAttn compares with the running maximum of an
online softmax; this PyTorch path has every score of the row at hand and uses the final one.

``sparse_sage`` computes the kept Q·Kᵀ blocks in INT8 with K smoothing as in ``sage``.

Thresholds per layer and head come from :mod:`vdiff.attention.calibrate` (``thresholds_file``
plus ``layer_index``; under Ulysses the sequence-parallel wrapper adds ``head_offset`` and
``num_heads``); a plain ``cdf_threshold`` or ``topk`` needs no calibration. Option ``grid``
reorders raster tokens into square tiles first (:func:`tile_permutation`).

Implementation (option ``kernel``, see :func:`block_sparse_attention`): on CUDA the Triton
kernel of :mod:`vdiff.attention.triton_kernels`; else PyTorch, no Python loop per block. The
fused path groups Q blocks in runs of :data:`Q_GROUP` that share the union of their K blocks and
runs torch SDPA per chunk of such query tiles over their gathered K/V blocks (dense heads in one
call); the tiled path materialises each chunk's scores (``torch._int_mm`` for INT8) over exactly
the mask, with the λ skip, the LSE and fp8 (:func:`torch_path` picks per machine). Skipped
blocks cost no FLOPs on any path. See docs/attention.md.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from vdiff.attention import register_backend
from vdiff.attention.sage import (
    PV_TORCH_DTYPES,
    check_blocks,
    check_qkv,
    cpu_has_amx,
    cpu_has_vnni,
    dequantize,
    int8_matmul,
    prepare_v,
    pv_batched,
    resolve_pv_dtype,
    smooth_and_quantize,
)

THRESHOLDS_FORMAT = "vdiff.sparse_attention_thresholds"
THRESHOLDS_FILENAME = "sparse_attention.json"


# ----------------------------------------------------------------------------- mask prediction


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


def _per_head(value: float | torch.Tensor, *, heads: int, device: torch.device) -> torch.Tensor:
    """A scalar or (heads,) threshold as a (1, heads, 1, 1) fp32 tensor."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if t.ndim == 0:
        t = t.expand(heads)
    if t.shape != (heads,):
        raise ValueError(f"per-head threshold has shape {tuple(t.shape)}, expected ({heads},)")
    return t.view(1, heads, 1, 1)


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
) -> torch.Tensor:
    """Stage 1: which (Q block, K block) pairs to compute; bool (B, H, nqb, nkb).

    ``cdf_threshold`` is a float or a per-head (H,) tensor; ``topk`` (a fraction in (0, 1])
    replaces it when given.
    """
    qp, q_sim, _ = pool_blocks(q, block=q_block)
    kp, k_sim, k_counts = pool_blocks(k, block=k_block)
    h, nk = qp.shape[1], kp.shape[2]
    q_free = q_sim < sim_threshold  # (B, H, nq): row always computed
    k_free = k_sim < sim_threshold  # (B, H, nk): column always computed
    # NOTE: a pooled K block stands for `count` tokens, hence + log(count) (matters for the last one).
    s = torch.matmul(qp, kp.transpose(-1, -2)) * scale + k_counts.log()  # (B, H, nq, nk)
    s = s.masked_fill(k_free[:, :, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num_(0.0)  # rows with every column free: all 0
    if topk is not None:
        if not 0.0 < topk <= 1.0:
            raise ValueError(f"sparse option topk must be a fraction in (0, 1], got {topk}")
        keep_n = max(1, math.ceil(topk * nk))
        idx = p.topk(keep_n, dim=-1).indices
        mask = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, idx, True)
    else:
        tau = _per_head(cdf_threshold, heads=h, device=q.device)
        p_sorted, order = p.sort(dim=-1, descending=True)
        before = p_sorted.cumsum(dim=-1) - p_sorted  # mass of the blocks ranked above
        keep_sorted = (before < tau) | (tau >= 1.0)
        mask = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return mask | q_free[..., None] | k_free[:, :, None, :]


# ----------------------------------------------------------------------------- sparse attention

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


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float,
    q_block: int = 128,
    k_block: int = 64,
    pv_threshold: float | torch.Tensor | None = None,
    quantize: bool = False,
    smooth_k: bool = True,
    pv_dtype: str = "fp32",
    need_lse: bool = True,
    q_group: int = Q_GROUP,
    kernel: str = "auto",
    widen: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stage 2: softmax attention over the blocks ``mask`` (B, H, nqb, nkb) keeps.

    Every group of ``q_group`` consecutive Q blocks computes the union of their kept K blocks
    (:func:`group_rows`), and every block when that union keeps more than :data:`DENSE_ABOVE` of
    them: a superset of ``mask``, so never less accurate.

    Returns out (B, H, Nq, D) in q's dtype and the log-sum-exp (B, H, Nq) fp32 of the kept scores
    (None unless ``need_lse``).
    ``pv_threshold`` is λ (a float or per-head (H,) tensor; None disables the skip); ``quantize``
    computes Q·Kᵀ in INT8 as ``sage`` does. Differentiable when ``quantize`` is False.

    Two PyTorch paths, same numerics. Fused (``kernel="fused"``; no λ, no LSE, P·V in
    fp32/bf16/fp16): Q and K (INT8 values dequantised exactly, see ``sage``) go through torch's
    fused SDPA kernel (flash tiling, no score matrix), once on whole tensors when every block is
    kept, else once per chunk of Q blocks over their gathered K/V blocks; it computes the widened
    mask above, and so does the tiled path when λ, the LSE or fp8 P·V sends a fused call there.
    Tiled (``kernel="tiled"``): explicit scores per chunk (INT8 by ``torch._int_mm``), softmax,
    the λ skip, LSE, then P·V, over exactly ``mask`` (no widening).

    ``widen=False`` computes exactly ``mask`` on the fused path too (slower on CPU): calibration
    measures that, so its budget holds on every path.

    ``kernel``: "triton" runs :mod:`vdiff.attention.triton_kernels` (CUDA, fp16/bf16, no
    gradients; exactly ``mask``), "fused" and "tiled" the PyTorch paths above, "torch" the
    PyTorch path this machine runs faster (:func:`torch_path`), "auto" Triton where it can run
    these inputs (:func:`use_triton`), else as "torch".

    Both PyTorch paths cut the work into rows (one per Q block), sort the rows by how many K blocks they keep
    and process chunks of similar rows, gathering the kept K and V blocks into dense tensors
    (padded to the chunk's largest count, padding masked with -inf), so skipped blocks cost no
    FLOPs and there is no Python loop per block.
    """
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    nq, nk = math.ceil(n_q / q_block), math.ceil(n_k / k_block)
    if mask.shape != (b, h, nq, nk):
        raise ValueError(f"block mask has shape {tuple(mask.shape)}, expected {(b, h, nq, nk)}")
    lam = None if pv_threshold is None else _per_head(pv_threshold, heads=h, device=q.device).view(h)
    if lam is not None and bool((lam > 0).any()):
        # NOTE: λ > 0 would drop even the block holding a row's maximum (the output becomes 0).
        raise ValueError(
            f"pv_threshold (λ) must be <= 0, the score gap below the row maximum past which P·V is "
            f"skipped (e.g. -8); got {lam.tolist()}"
        )
    if use_triton(kernel, q, k, v, q_block=q_block, k_block=k_block, pv_dtype=pv_dtype, quantize=quantize):
        from vdiff.attention.triton_kernels import triton_block_attention

        out, lse = triton_block_attention(
            q,
            k,
            v,
            mask,
            scale=scale,
            q_block=q_block,
            k_block=k_block,
            quantize=quantize,
            smooth_k=smooth_k,
            pv_dtype=pv_dtype,
            pv_threshold=lam,
        )
        return out, (lse if need_lse else None)
    path = torch_path(kernel, q, quantize=quantize)
    widen = widen and path == "fused"
    if widen:
        mask = group_rows(mask, group=q_group)
        mask = mask | dense_heads(mask)[..., None, None]  # both paths compute the same blocks
    else:
        q_group = 1  # the fused path reads one mask row per run of q_group Q blocks
    rows_mask = mask.reshape(b * h * nq, nk)
    counts = rows_mask.sum(dim=-1)  # (R,)
    if bool((counts == 0).any()):
        first = int((counts == 0).nonzero()[0, 0]) % nq
        raise RuntimeError(f"block mask keeps no K block for Q block {first}; keep at least one")
    offset = None
    if quantize:
        qi, q_scale, ki, k_scale, offset = smooth_and_quantize(
            q, k, scale=scale, q_block=q_block, k_block=k_block, smooth_k=smooth_k
        )
    if path == "fused" and lam is None and not need_lse and pv_dtype in PV_TORCH_DTYPES:
        dt = PV_TORCH_DTYPES[pv_dtype]
        if quantize:
            qd, kd = (
                dequantize(qi, q_scale, block=q_block, dtype=dt),
                dequantize(ki, k_scale, block=k_block, dtype=dt),
            )
            sdpa_scale = 1.0  # folded into Q before quantisation
        else:
            qd, kd, sdpa_scale = q.to(dt), k.to(dt), scale
        out = fused_block_attention(
            qd, kd, v.to(dt), mask, scale=sdpa_scale, q_block=q_block, k_block=k_block, q_group=q_group
        )
        return out.to(q.dtype), None
    if quantize:
        q_rows = _blocks(qi, block=q_block)  # (B*H, nq, bq, D) int8
        k_rows = _blocks(ki, block=k_block)  # (B*H, nk, bk, D) int8
        q_scale, k_scale = q_scale.reshape(b * h * nq), k_scale.reshape(b * h, nk)
    else:
        q_rows = _blocks(q.float() * scale, block=q_block)  # (B*H, nq, bq, D) fp32
        k_rows = _blocks(k.float(), block=k_block)  # (B*H, nk, bk, D) fp32
    v_rows, v_scale = prepare_v(_blocks(v, block=k_block), pv_dtype=pv_dtype)  # (B*H, nk, bk, D)
    # NOTE: padded key positions of the last K block get -inf before the softmax.
    key_bias = torch.zeros(nk * k_block, device=q.device)
    key_bias[n_k:] = float("-inf")
    key_bias = key_bias.view(nk, k_block)
    # NOTE: kept columns first, in ascending order (stable sort), then the dropped ones.
    cols_sorted = rows_mask.to(torch.int8).argsort(dim=-1, descending=True, stable=True)  # (R, nk)
    order, chunks = _chunk_rows(counts, elems_per_block=q_block * k_block)
    outs, lses = [], []
    ws = _Workspace(enabled=not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))))
    for sel, c in chunks:
        g = sel.numel()
        bh = torch.div(sel, nq, rounding_mode="floor")  # (G,)
        cols = cols_sorted.index_select(0, sel)[:, :c]  # (G, c)
        valid = torch.arange(c, device=q.device) < counts.index_select(0, sel)[:, None]  # (G, c)
        flat = (bh[:, None] * nk + cols).view(-1)  # (G*c,) indices into the (B*H*nk) K blocks
        shape = (g, q_block, c * k_block)
        if quantize:
            s_int = _int8_scores(q_rows, k_rows, sel=sel, flat=flat, c=c, ws=ws)  # (G, bq, c*bk) int32
            blk_scale = k_scale.view(-1).index_select(0, flat).view(g, 1, c, 1)
            blk_scale = blk_scale * q_scale.index_select(0, sel).view(g, 1, 1, 1)  # (G, 1, c, 1)
            # NOTE: convert, then scale in place: an int32 x fp32 broadcast multiply runs torch's
            # non-vectorised casting loop (~5x slower here).
            s = ws.take("s", shape, torch.float32, q.device).copy_(s_int)
            s.view(g, q_block, c, k_block).mul_(blk_scale)
        else:
            q_sel = q_rows.reshape(-1, q_block, d).index_select(0, sel)  # (G, bq, D)
            k_sel = k_rows.reshape(-1, k_block, d).index_select(0, flat).view(g, c * k_block, d)
            if ws.enabled:
                s = torch.bmm(q_sel, k_sel.transpose(1, 2), out=ws.take("s", shape, torch.float32, q.device))
            else:
                s = torch.bmm(q_sel, k_sel.transpose(1, 2))  # (G, bq, c*bk)
        bias = key_bias.index_select(0, cols.reshape(-1)).view(g, c, k_block)
        bias = bias.masked_fill(~valid[..., None], float("-inf"))
        if bool(torch.isinf(bias).any()):
            s = s.add_(bias.view(g, 1, c * k_block)) if ws.enabled else s + bias.view(g, 1, c * k_block)
        if ws.enabled:
            p = torch.softmax(s, dim=-1, out=ws.take("p", shape, torch.float32, q.device))
        else:
            p = torch.softmax(s, dim=-1)  # (G, bq, c*bk)
        v_flat = flat
        if lam is not None:
            rows_real = n_q - torch.remainder(sel, nq)[:, None] * q_block  # (G, 1): real rows of each Q block
            row_ok = torch.arange(q_block, device=q.device) < rows_real  # (G, bq)
            p, v_flat = _skip_pv_blocks(
                s, p, flat, valid, row_ok, lam=lam.index_select(0, bh % h), k_block=k_block
            )
        v_sel = v_rows.reshape(-1, k_block, d).index_select(0, v_flat).view(g, -1, d)  # (G, c', D)
        p_buf = None
        if ws.enabled and pv_dtype in ("bf16", "fp16"):
            p_buf = ws.take("p_half", tuple(p.shape), PV_TORCH_DTYPES[pv_dtype], q.device)
        v_sc = None if v_scale is None else v_scale[bh]
        outs.append(pv_batched(p, v_sel, pv_dtype=pv_dtype, v_scale=v_sc, p_buf=p_buf))
        if need_lse:
            lses.append(torch.logsumexp(s, dim=-1))  # (G, bq)
    inv = order.argsort()  # (R,): sorted position of each row
    out = torch.cat(outs).index_select(0, inv).view(b, h, nq * q_block, d)[:, :, :n_q].to(q.dtype)
    if not need_lse:
        return out, None
    lse = torch.cat(lses).index_select(0, inv).view(b, h, nq * q_block)[:, :, :n_q]
    return out, (lse + offset if offset is not None else lse)


KERNELS = ("auto", "triton", "torch", "fused", "tiled")


def torch_path(kernel: str, q: torch.Tensor, *, quantize: bool) -> str:
    """The PyTorch path ("fused" or "tiled") that ``kernel`` picks when Triton does not run.

    "auto"/"torch": tiled for INT8 Q·Kᵀ on a CPU with VNNI but no AMX, else fused.
    """
    if kernel in ("fused", "tiled"):
        return kernel
    # NOTE: measured at N = 16384, 12 heads, D = 128, video-like inputs in tile order, cdf 0.9
    # (docs/benchmarks.md): on an AMD EPYC with AVX512-VNNI/BF16 but no AMX, SDPA runs bf16 no
    # faster than fp32, while torch._int_mm runs INT8 fast, so the tiled INT8 path over the exact
    # mask took 2.46 s against 4.68 s fused (same blocks) and 6.38 s fused over the widened mask.
    # With AMX (Intel Xeon, same N, D, cdf) the fused bf16 path is the faster one: 3.09 s against
    # 6.82 s tiled in tile order, 3.99 s against 11.79 s in raster order, because there
    # torch._int_mm ran ~7x slower than a bf16 matmul of the same shape. CPUs without VNNI were
    # not measured and keep the fused path.
    if quantize and q.device.type == "cpu" and cpu_has_vnni() and not cpu_has_amx():
        return "tiled"
    return "fused"


@functools.cache
def _triton_installed() -> bool:
    # NOTE: asked once, not on every attention call of every layer.
    return importlib.util.find_spec("triton") is not None


def use_triton(
    kernel: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    q_block: int,
    k_block: int,
    pv_dtype: str,
    quantize: bool,
) -> bool:
    """Whether ``kernel`` ("auto", "triton" or "torch") picks the Triton kernel for these inputs.

    "auto" picks it on CUDA when Triton imports, no gradient is needed and the inputs are ones
    it takes; "triton" insists, and inputs it cannot run are an error saying why.
    """
    if kernel not in KERNELS:
        raise ValueError(f"sparse/sage option kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel in ("torch", "fused", "tiled"):
        return False
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if kernel == "auto" and (q.device.type != "cuda" or needs_grad or not _triton_installed()):
        return False
    if needs_grad:
        raise ValueError("kernel='triton' is forward-only; use kernel='torch' (or 'auto') for gradients")
    try:
        from vdiff.attention.triton_kernels import unsupported_reason
    except ImportError as e:
        raise ValueError(f"kernel='triton' needs the triton package ({e}); pip install triton") from e
    reason = unsupported_reason(q, q_block=q_block, k_block=k_block, pv_dtype=pv_dtype, quantize=quantize)
    if reason is not None and kernel == "triton":
        raise ValueError(f"kernel='triton' cannot run {reason}; use kernel='torch' or 'auto'")
    return reason is None


# NOTE: a chunk's score tile holds at most this many elements (16 MiB in fp32): large enough that
# each batched op amortises its dispatch (and, on a busy machine, its thread start-up), small
# enough to stay bounded at any sequence length.
_TILE_ELEMS = 1 << 22


class _Workspace:
    """Flat buffers reused by every chunk of one tiled call (None of them when autograd records).

    Fresh (G, bq, c*bk) tensors of a few MB per chunk cost more in first-touch page faults than
    the arithmetic on them (profiled at N = 16384, D = 64: ~8.8 GB of faults in one `sage` call).
    """

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bufs: dict[str, torch.Tensor] = {}

    def take(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """A tensor of ``shape`` (uninitialised): a view of buffer ``name`` when enabled."""
        if not self.enabled:
            return torch.empty(shape, dtype=dtype, device=device)
        n = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self._bufs[name] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)


def _chunk_rows(
    counts: torch.Tensor, *, elems_per_block: int
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, int]]]:
    """Rows sorted by kept-block count (descending) and cut into chunks of at most _TILE_ELEMS.

    Returns the order (R,) and, per chunk, its rows (G,) and their largest count c.
    """
    order = counts.argsort(descending=True, stable=True)  # (R,)
    sorted_counts = counts[order].tolist()
    chunks, start = [], 0
    while start < len(sorted_counts):
        c = int(sorted_counts[start])
        g = max(1, min(_TILE_ELEMS // (elems_per_block * c), len(sorted_counts) - start))
        chunks.append((order[start : start + g], c))
        start += g
    return order, chunks


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
    counts = rows_mask.sum(dim=-1)  # (R,)
    q_rows = _blocks(q, block=tile).reshape(-1, tile, d)  # (B*H*nt, tile, D)
    k_rows = _blocks(k, block=k_block).reshape(-1, k_block, d)  # (B*H*nk, bk, D)
    v_rows = _blocks(v, block=k_block).reshape(-1, k_block, d)
    key_ok = torch.arange(nk * k_block, device=q.device).view(nk, k_block) < n_k  # (nk, bk)
    cols_sorted = rows_mask.to(torch.int8).argsort(dim=-1, descending=True, stable=True)  # (R, nk)
    # NOTE: SDPA keeps no score matrix, so a chunk is bounded by its gathered K (and V) instead.
    order, chunks = _chunk_rows(counts, elems_per_block=k_block * d)
    outs = []
    for sel, c in chunks:
        g = sel.numel()
        cols = cols_sorted.index_select(0, sel)[:, :c]  # (G, c)
        flat = (torch.div(sel, nt, rounding_mode="floor")[:, None] * nk + cols).view(-1)  # (G*c,)
        k_sel = k_rows.index_select(0, flat).view(1, g, c * k_block, d)
        v_sel = v_rows.index_select(0, flat).view(1, g, c * k_block, d)
        ok = key_ok.index_select(0, cols.reshape(-1)).view(g, c, k_block)
        ok = ok & (torch.arange(c, device=q.device) < counts.index_select(0, sel)[:, None])[..., None]
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


def _blocks(x: torch.Tensor, *, block: int) -> torch.Tensor:
    """(B, H, N, D) -> (B*H, ceil(N / block), block, D), zero-padded at the end."""
    b, h, n, d = x.shape
    nb = math.ceil(n / block)
    if nb * block != n:
        x = torch.nn.functional.pad(x, (0, 0, 0, nb * block - n))
    return x.reshape(b * h, nb, block, d)


def _int8_scores(
    q_rows: torch.Tensor,
    k_rows: torch.Tensor,
    *,
    sel: torch.Tensor,
    flat: torch.Tensor,
    c: int,
    ws: _Workspace,
) -> torch.Tensor:
    """INT32 Q·Kᵀ of the chunk's rows: (G, bq, c*bk); one ``torch._int_mm`` per row (it is 2-D only)."""
    bq, d = q_rows.shape[2], q_rows.shape[3]
    bk = k_rows.shape[2]
    g = sel.numel()
    q_sel = q_rows.reshape(-1, bq, d).index_select(0, sel)  # (G, bq, D) int8
    k_sel = k_rows.reshape(-1, bk, d).index_select(0, flat).view(g, c * bk, d)  # (G, c*bk, D) int8
    out = ws.take("s_int32", (g, bq, c * bk), torch.int32, q_rows.device)
    for r in range(g):
        if q_rows.device.type == "cpu":
            torch._int_mm(q_sel[r], k_sel[r].t(), out=out[r])  # no int32 copy
        else:
            out[r] = int8_matmul(q_sel[r], k_sel[r].t())
    return out


def _skip_pv_blocks(
    s: torch.Tensor,
    p: torch.Tensor,
    flat: torch.Tensor,
    valid: torch.Tensor,
    row_ok: torch.Tensor,
    *,
    lam: torch.Tensor,
    k_block: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop from P·V the K blocks whose largest score is below every real row's maximum by more than |λ|.

    s, p (G, bq, c*bk); flat (G*c,) K-block indices; valid (G, c); row_ok (G, bq), False for the
    zero padding after the last query (it must not keep blocks alive); lam (G,). Returns the
    compacted P (G, bq, c'*bk) and its K-block indices (G*c',); the softmax normaliser still
    counts the dropped blocks, as in SpargeAttn.
    """
    g, bq, _ = s.shape
    c = valid.shape[1]
    with torch.no_grad():
        block_max = s.view(g, bq, c, k_block).amax(dim=-1)  # (G, bq, c)
        gap = block_max - block_max.amax(dim=-1, keepdim=True)  # (G, bq, c)
        gap = gap.masked_fill(~row_ok[..., None], float("-inf")).amax(dim=1)  # (G, c)
        keep = (gap >= lam[:, None]) & valid
    if bool((keep == valid).all()):
        return p, flat
    c2 = max(1, int(keep.sum(dim=-1).max()))
    pick = keep.to(torch.int8).argsort(dim=-1, descending=True, stable=True)[:, :c2]  # (G, c2)
    kept = keep.gather(1, pick)  # (G, c2)
    p4 = p.view(g, bq, c, k_block).gather(2, pick[:, None, :, None].expand(g, bq, c2, k_block))
    p4 = p4 * kept[:, None, :, None]
    return p4.reshape(g, bq, c2 * k_block), flat.view(g, c).gather(1, pick).view(-1)


# ----------------------------------------------------------------------------- thresholds


@dataclass
class LayerThresholds:
    """Calibrated thresholds of one layer, one entry per (global) head."""

    cdf_threshold: list[float]
    """per-head pooled-softmax mass the kept K blocks must reach"""
    pv_threshold: list[float] | None = None
    """per-head λ of the P·V skip (None: no skip)"""
    rel_l1: list[float] | None = None
    """per-head relative L1 against dense attention measured at calibration"""


@dataclass
class SparseThresholds:
    """Per-layer, per-head thresholds and the settings they were calibrated under."""

    backend: str
    """backend calibrated: sparse or sparse_sage"""
    l1_budget: float
    """relative-L1 budget each head was held to"""
    q_block: int
    """Q block size used at calibration (must match at run time)"""
    k_block: int
    """K block size used at calibration (must match at run time)"""
    sim_threshold: float
    """self-similarity threshold used at calibration"""
    layers: dict[int, LayerThresholds]
    """layer index -> thresholds"""

    def to_json(self) -> dict:
        """The JSON document (see docs/attention.md, "Calibration file")."""
        return {
            "format": THRESHOLDS_FORMAT,
            "version": 1,
            "backend": self.backend,
            "l1_budget": self.l1_budget,
            "q_block": self.q_block,
            "k_block": self.k_block,
            "sim_threshold": self.sim_threshold,
            "layers": {
                str(i): {"cdf_threshold": t.cdf_threshold, "pv_threshold": t.pv_threshold, "rel_l1": t.rel_l1}
                for i, t in sorted(self.layers.items())
            },
        }

    @classmethod
    def from_json(cls, doc: dict, *, source: str = "<dict>") -> SparseThresholds:
        """Parse :meth:`to_json`'s document; a wrong format is an error naming ``source``."""
        if doc.get("format") != THRESHOLDS_FORMAT or doc.get("version") != 1:
            raise ValueError(
                f"{source} is not a vdiff sparse-attention thresholds file (format "
                f"{doc.get('format')!r} version {doc.get('version')!r}); recalibrate with "
                "vdiff.attention.calibrate"
            )
        layers = {
            int(i): LayerThresholds(
                cdf_threshold=[float(x) for x in t["cdf_threshold"]],
                pv_threshold=None if t.get("pv_threshold") is None else [float(x) for x in t["pv_threshold"]],
                rel_l1=t.get("rel_l1"),
            )
            for i, t in doc["layers"].items()
        }
        return cls(
            backend=doc["backend"],
            l1_budget=float(doc["l1_budget"]),
            q_block=int(doc["q_block"]),
            k_block=int(doc["k_block"]),
            sim_threshold=float(doc["sim_threshold"]),
            layers=layers,
        )

    def save(self, path: str | Path) -> Path:
        """Write the JSON file atomically; a directory gets ``sparse_attention.json`` inside it."""
        from vdiff.io.files import atomic_write_json

        path = Path(path)
        if path.is_dir():
            path = path / THRESHOLDS_FILENAME
        atomic_write_json(path, self.to_json())
        return path

    def for_layer(
        self, layer_index: int, *, heads: int, head_offset: int = 0, num_heads: int | None = None
    ) -> LayerThresholds:
        """Thresholds of ``heads`` local heads starting at global head ``head_offset``.

        ``num_heads``: the layer's head count (Ulysses passes it with ``head_offset``); the file
        must hold exactly that many. Without it, ``head_offset=0`` means the call sees every head.
        """
        if layer_index not in self.layers:
            raise ValueError(
                f"sparse-attention thresholds have no entry for layer {layer_index} (calibrated layers: "
                f"{sorted(self.layers)}); recalibrate for this model"
            )
        t = self.layers[layer_index]
        total = num_heads if num_heads is not None else (heads if head_offset == 0 else None)
        if total is not None and len(t.cdf_threshold) != total:
            raise ValueError(
                f"layer {layer_index} was calibrated for {len(t.cdf_threshold)} heads, but this attention "
                f"has {total}; the thresholds file belongs to another model: recalibrate for this one"
            )
        lo, hi = head_offset, head_offset + heads
        if hi > len(t.cdf_threshold):
            raise ValueError(
                f"layer {layer_index} was calibrated for {len(t.cdf_threshold)} heads; heads "
                f"{lo}..{hi - 1} requested (check head_offset under Ulysses)"
            )
        return LayerThresholds(
            cdf_threshold=t.cdf_threshold[lo:hi],
            pv_threshold=None if t.pv_threshold is None else t.pv_threshold[lo:hi],
            rel_l1=None if t.rel_l1 is None else t.rel_l1[lo:hi],
        )


def load_thresholds(path: str | Path) -> SparseThresholds:
    """Read a thresholds file (or ``sparse_attention.json`` inside a checkpoint folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / THRESHOLDS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"sparse-attention thresholds file {path} not found; run vdiff.attention.calibrate "
            "or use topk= / cdf_threshold= without a file"
        )
    stat = path.stat()
    return _load_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> SparseThresholds:
    with open(path) as f:
        return SparseThresholds.from_json(json.load(f), source=path)


# ----------------------------------------------------------------------------- token order


def tile_permutation(grid: tuple[int, int, int] | list[int], *, tokens: int, k_block: int) -> torch.Tensor:
    """Token order that makes every K block one square tile of a frame (SpargeAttn-style reordering).

    ``grid`` is (frames, height, width) of tokens laid out in raster order (t, y, x), as a video
    DiT does. Returns idx (tokens,) with ``x[:, :, idx]`` in tile order (:func:`tile_order` with
    s x s tiles, s² = k_block; ragged tiles at the edges where s does not divide the height or
    width); a Q block of 128 tokens is then two side-by-side 8x8 tiles instead of a 4-row strip,
    so its mean is a good summary.
    """
    from vdiff.attention.token_order import tile_order

    t, h, w = (int(x) for x in grid)
    s = math.isqrt(k_block)
    if s * s != k_block:
        raise ValueError(f"sparse option grid needs a square k_block (e.g. 64 = 8x8 tiles), got {k_block}")
    if t * h * w != tokens:
        raise ValueError(f"sparse option grid={tuple(grid)} holds {t * h * w} tokens, q and k have {tokens}")
    return tile_order((t, h, w), tile=s)


# ----------------------------------------------------------------------------- backends


def _sparse(
    name: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    return_lse: bool,
    quantize: bool,
    q_block: int,
    k_block: int,
    cdf_threshold: float,
    topk: float | None,
    sim_threshold: float,
    pv_threshold: float | None,
    thresholds_file: str | Path | None,
    thresholds: SparseThresholds | None,
    layer_index: int | None,
    head_offset: int,
    num_heads: int | None,
    pv_dtype: str,
    smooth_k: bool,
    grid: tuple[int, int, int] | list[int] | None,
    kernel: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    check_qkv(name, q, k, v)
    check_blocks(name, q_block=q_block, k_block=k_block)
    idx = None
    if grid is not None:
        if q.shape[2] != k.shape[2]:
            raise ValueError(f"attention backend {name!r}: option grid is for self-attention (Nq == Nk)")
        idx = tile_permutation(grid, tokens=q.shape[2], k_block=k_block).to(q.device)
        q, k, v = (x.index_select(2, idx) for x in (q, k, v))
    if thresholds is None and thresholds_file is not None:
        thresholds = load_thresholds(thresholds_file)
    cdf: float | torch.Tensor = cdf_threshold
    lam: float | torch.Tensor | None = pv_threshold
    if thresholds is not None and topk is None:
        if layer_index is None:
            raise ValueError(f"attention backend {name!r}: per-layer thresholds need the layer_index option")
        if (thresholds.q_block, thresholds.k_block) != (q_block, k_block):
            raise ValueError(
                f"thresholds were calibrated with blocks ({thresholds.q_block}, {thresholds.k_block}), "
                f"not ({q_block}, {k_block}); pass the same q_block/k_block or recalibrate"
            )
        t = thresholds.for_layer(layer_index, heads=q.shape[1], head_offset=head_offset, num_heads=num_heads)
        cdf = torch.tensor(t.cdf_threshold)
        lam = None if t.pv_threshold is None else torch.tensor(t.pv_threshold)
        sim_threshold = thresholds.sim_threshold
    mask = predict_block_mask(
        q,
        k,
        scale=scale,
        q_block=q_block,
        k_block=k_block,
        cdf_threshold=cdf,
        topk=topk,
        sim_threshold=sim_threshold,
    )
    pv = resolve_pv_dtype(pv_dtype, device=q.device, in_dtype=q.dtype) if quantize else "fp32"
    out, lse = block_sparse_attention(
        q,
        k,
        v,
        mask,
        scale=scale,
        q_block=q_block,
        k_block=k_block,
        pv_threshold=lam,
        quantize=quantize,
        smooth_k=smooth_k,
        pv_dtype=pv,
        need_lse=return_lse,
        kernel=kernel,
    )
    if idx is not None:
        inv = idx.argsort()
        out = out.index_select(2, inv)
        lse = None if lse is None else lse.index_select(2, inv)
    return (out, lse) if return_lse else out


@register_backend("sparse", supports_grad=True, supports_lse=True)
def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    return_lse: bool = False,
    q_block: int = 128,
    k_block: int = 64,
    cdf_threshold: float = 0.99,
    topk: float | None = None,
    sim_threshold: float = 0.3,
    pv_threshold: float | None = None,
    thresholds_file: str | Path | None = None,
    thresholds: SparseThresholds | None = None,
    layer_index: int | None = None,
    head_offset: int = 0,
    num_heads: int | None = None,
    grid: tuple[int, int, int] | list[int] | None = None,
    kernel: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SpargeAttn-style block-sparse attention, mask predicted per call (fp32 math; differentiable).

    ``grid`` = (frames, height, width) of the raster-order tokens: attend in tile order
    (:func:`tile_permutation`; the output is in the input's order).
    """
    return _sparse(
        "sparse",
        q,
        k,
        v,
        scale=scale,
        return_lse=return_lse,
        quantize=False,
        q_block=q_block,
        k_block=k_block,
        cdf_threshold=cdf_threshold,
        topk=topk,
        sim_threshold=sim_threshold,
        pv_threshold=pv_threshold,
        thresholds_file=thresholds_file,
        thresholds=thresholds,
        layer_index=layer_index,
        head_offset=head_offset,
        num_heads=num_heads,
        pv_dtype="fp32",
        smooth_k=False,
        grid=grid,
        kernel=kernel,
    )


@register_backend("sparse_sage", supports_grad=False, supports_lse=True)
def sparse_sage_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    return_lse: bool = False,
    q_block: int = 128,
    k_block: int = 64,
    cdf_threshold: float = 0.99,
    topk: float | None = None,
    sim_threshold: float = 0.3,
    pv_threshold: float | None = None,
    thresholds_file: str | Path | None = None,
    thresholds: SparseThresholds | None = None,
    layer_index: int | None = None,
    head_offset: int = 0,
    num_heads: int | None = None,
    pv_dtype: str = "auto",
    smooth_k: bool = True,
    grid: tuple[int, int, int] | list[int] | None = None,
    kernel: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention with INT8 Q·Kᵀ on the kept blocks (inference only; ``grid`` as sparse's)."""
    return _sparse(
        "sparse_sage",
        q,
        k,
        v,
        scale=scale,
        return_lse=return_lse,
        quantize=True,
        q_block=q_block,
        k_block=k_block,
        cdf_threshold=cdf_threshold,
        topk=topk,
        sim_threshold=sim_threshold,
        pv_threshold=pv_threshold,
        thresholds_file=thresholds_file,
        thresholds=thresholds,
        layer_index=layer_index,
        head_offset=head_offset,
        num_heads=num_heads,
        pv_dtype=pv_dtype,
        smooth_k=smooth_k,
        grid=grid,
        kernel=kernel,
    )
