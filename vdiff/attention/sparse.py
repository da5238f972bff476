"""``sparse`` and ``sparse_sage``: SpargeAttn-style block-sparse attention with a mask predicted
on every call (Zhang et al., SpargeAttn, ICML 2025).

Each backend is a composition: stage 1, the block mask (:func:`vdiff.attention.mask.predict_block_mask`:
SpargeAttn's self-similarity and pooled-score rules plus sub-block centres, so a dominant run of
keys is kept wherever it sits); stage 2, exact softmax over the kept blocks on one execution path
(:func:`vdiff.attention.execute.block_sparse_attention`: Triton, the native CPU kernel, torch
fused or torch tiled; each gets the same mask). With ``pv_threshold`` (λ < 0) the P·V product
also skips a kept K block when, for every row of the Q block, that block's largest score is
below the row's maximum by more than |λ| (its weights are all < e^λ of the row's largest
weight). ``sparse_sage`` computes the kept Q·Kᵀ blocks in INT8 with K smoothing as ``sage``
does (:mod:`vdiff.attention.quant`).

Thresholds per layer and head come from :mod:`vdiff.attention.thresholds` (``thresholds_file``
plus ``layer_index``, written by :mod:`vdiff.attention.calibrate`; under Ulysses the
sequence-parallel wrapper adds ``head_offset`` and ``num_heads``); a plain ``cdf_threshold`` or
``topk`` needs no calibration. Option ``grid`` reorders raster tokens into square tiles first
(:func:`vdiff.attention.token_order.tile_permutation`). See docs/attention.md.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vdiff.attention.checks import check_blocks, check_qkv
from vdiff.attention.execute import block_sparse_attention, torch_path, use_triton
from vdiff.attention.mask import pool_blocks, predict_block_mask
from vdiff.attention.quant import resolve_pv_dtype
from vdiff.attention.registry import register_backend
from vdiff.attention.thresholds import LayerThresholds, SparseThresholds, load_thresholds
from vdiff.attention.token_order import tile_permutation

# NOTE: the stages' and the thresholds' names stay importable from here, where they used to live.
__all__ = [
    "LayerThresholds",
    "SparseThresholds",
    "block_sparse_attention",
    "load_thresholds",
    "pool_blocks",
    "predict_block_mask",
    "sparse_attention",
    "sparse_sage_attention",
    "tile_permutation",
    "torch_path",
    "use_triton",
]


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
