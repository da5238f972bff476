"""Calibrate per-layer, per-head sparse-attention thresholds against dense attention.

For each head, the smallest ``cdf_threshold`` of a grid whose output stays within a relative-L1
target of fp32 dense attention (SpargeAttn's calibration, a grid search per head), then,
optionally, the most aggressive λ (``pv_threshold``) that still meets it. The target is the
budget less a safety margin, ``(1 - margin) * l1_budget`` (:data:`MARGIN`, 0.5: half the budget),
so that inputs the calibration did not see (other prompts, seeds, noise levels) stay within the
budget itself; :func:`held_out_l1` measures that on held-out inputs. The result is a
:class:`~vdiff.attention.thresholds.SparseThresholds` saved as JSON next to the checkpoint
(``sparse_attention.json``; format in docs/attention.md).

Use :class:`ThresholdCalibrator` as the model's attention op during a few sampling runs: it
returns dense attention (so the run is unchanged) and records, per layer and head, the most
conservative thresholds any call needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from vdiff.attention.execute import block_sparse_attention, cpu_path
from vdiff.attention.mask import predict_block_mask
from vdiff.attention.metrics import dense_reference, relative_l1
from vdiff.attention.quant import resolve_pv_dtype
from vdiff.attention.thresholds import LayerThresholds, SparseThresholds

DEFAULT_CDF_GRID = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0)
"""candidate cdf thresholds, tried from the smallest (sparsest); 1.0 keeps every block (for sparse,
exact; for sparse_sage, the quantisation error remains: a budget below it is an error). Fine above
0.9, where video heads land at a 0.02 budget and each step changes the kept blocks most."""
MARGIN = 0.5
"""safety margin: thresholds are picked for (1 - MARGIN) x the budget on the calibration inputs.
On recorded activations of a trained model, held-out seeds and noise levels reached up to ~1.5x
the calibration inputs' error at the same thresholds (docs/attention.md, "Calibration")"""
NO_SKIP = -1e4
"""λ stored for a head where no candidate met the budget: never skips a block"""


def _head_l1(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ref: torch.Tensor,
    *,
    scale: float,
    quantize: bool,
    q_block: int,
    k_block: int,
    sim_threshold: float,
    cdf: torch.Tensor,
    pv_threshold: torch.Tensor | None,
    pv_dtype: str,
    kernel: str,
) -> torch.Tensor:
    """Relative L1 per head (H,) of sparse attention with per-head thresholds against ``ref``."""
    mask = predict_block_mask(
        q, k, scale=scale, q_block=q_block, k_block=k_block, cdf_threshold=cdf, sim_threshold=sim_threshold
    )
    out, _ = block_sparse_attention(
        q,
        k,
        v,
        mask,
        scale=scale,
        q_block=q_block,
        k_block=k_block,
        pv_threshold=pv_threshold,
        quantize=quantize,
        pv_dtype=pv_dtype,
        need_lse=False,
        # NOTE: the exact mask, as the Triton and native kernels compute it; the fused path's
        # widened mask is a superset, and its λ skip (final row maximum) drops at least what
        # Triton's drops.
        kernel=kernel,
        widen=False,
    )
    return relative_l1(out, ref, dims=(0, 2, 3)).float()  # (H,)


@torch.no_grad()
def calibrate_layer(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    l1_budget: float,
    scale: float | None = None,
    backend: str = "sparse_sage",
    q_block: int = 128,
    k_block: int = 64,
    sim_threshold: float = 0.3,
    cdf_grid: Sequence[float] = DEFAULT_CDF_GRID,
    pv_grid: Sequence[float] | None = None,
    pv_dtype: str = "auto",
    margin: float = MARGIN,
) -> LayerThresholds:
    """Per-head thresholds for one layer's (B, H, N, D) q, k, v under ``l1_budget``.

    Each head gets the sparsest thresholds whose relative L1 on these inputs is at most
    ``(1 - margin) * l1_budget`` (every block kept, cdf 1.0, when none is; that must still meet
    ``l1_budget`` itself, else an error).

    ``pv_grid``: candidate λ values (< 0); the one closest to 0 that keeps a head within budget
    (with its chosen cdf threshold) is kept, :data:`NO_SKIP` when none does. None: no λ.
    ``pv_dtype``: sparse_sage's P·V precision at run time (its option of the same name).
    """
    if backend not in ("sparse", "sparse_sage"):
        raise ValueError(f"calibrate: backend must be 'sparse' or 'sparse_sage', got {backend!r}")
    if not l1_budget > 0:
        raise ValueError(f"calibrate: l1_budget must be > 0, got {l1_budget}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(
            f"calibrate: margin must be in [0, 1) (the share of the budget held back), got {margin}"
        )
    target = (1.0 - margin) * l1_budget
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    heads = q.shape[1]
    # NOTE: calibrate with the P·V precision the backend will run with (sparse_sage's "auto").
    pv = resolve_pv_dtype(pv_dtype, device=q.device, in_dtype=q.dtype) if backend == "sparse_sage" else "fp32"
    ref = dense_reference(q, k, v, scale=scale)
    opts = {"q_block": q_block, "k_block": k_block, "pv_dtype": pv, "quantize": backend == "sparse_sage"}
    common = dict(
        scale=scale, sim_threshold=sim_threshold, kernel=_measured_kernel(q, opts, lam=None), **opts
    )
    grid = sorted({float(t) for t in cdf_grid} | {1.0})
    chosen = torch.ones(heads, dtype=torch.float64)
    err = torch.full((heads,), math.inf)
    done = torch.zeros(heads, dtype=torch.bool)
    for tau in grid:
        l1 = _head_l1(q, k, v, ref, cdf=torch.full((heads,), tau), pv_threshold=None, **common)
        ok = ~done & ((l1 <= target) | (tau >= 1.0))
        chosen[ok] = tau
        err[ok] = l1[ok]
        done |= ok
        if bool(done.all()):
            break
    over = (err > l1_budget).nonzero().flatten().tolist()
    if over:
        raise ValueError(
            f"calibrate: l1_budget={l1_budget} is below {backend}'s error with every block kept "
            f"(relative L1 {', '.join(f'{err[h]:.4g} in head {h}' for h in over)}; INT8 Q·Kᵀ and "
            "half-precision P·V cost that much); raise the budget, or calibrate backend='sparse'"
        )
    lam = None
    if pv_grid:
        lam = torch.full((heads,), NO_SKIP, dtype=torch.float64)
        lam_done = torch.zeros(heads, dtype=torch.bool)
        for cand in sorted((float(x) for x in pv_grid), reverse=True):  # closest to 0 first
            l1 = _head_l1(q, k, v, ref, cdf=chosen, pv_threshold=torch.where(lam_done, lam, cand), **common)
            ok = ~lam_done & (l1 <= target)
            lam[ok] = cand
            err[ok] = l1[ok]
            lam_done |= ok
            if bool(lam_done.all()):
                break
    return LayerThresholds(
        cdf_threshold=chosen.tolist(),
        pv_threshold=None if lam is None else lam.tolist(),
        rel_l1=err.tolist(),
    )


class ThresholdCalibrator:
    """An attention op that returns dense attention and records per-layer, per-head thresholds.

    Call it as ``calib(q, k, v, layer_index=i)`` from each self-attention layer during a few
    representative sampling runs, then :meth:`result` or :meth:`save`. Under Ulysses the
    sequence-parallel wrapper adds ``head_offset`` and ``num_heads`` (the layer's head count),
    and :meth:`result` then checks that every head was seen.
    """

    def __init__(
        self,
        *,
        l1_budget: float,
        backend: str = "sparse_sage",
        q_block: int = 128,
        k_block: int = 64,
        sim_threshold: float = 0.3,
        cdf_grid: Sequence[float] = DEFAULT_CDF_GRID,
        pv_grid: Sequence[float] | None = None,
        margin: float = MARGIN,
    ) -> None:
        self.settings = dict(
            l1_budget=l1_budget,
            margin=margin,
            backend=backend,
            q_block=q_block,
            k_block=k_block,
            sim_threshold=sim_threshold,
            cdf_grid=tuple(cdf_grid),
            pv_grid=None if pv_grid is None else tuple(pv_grid),
        )
        self.layers: dict[int, dict[int, tuple[float, float | None, float]]] = {}
        self.num_heads: dict[int, int] = {}

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        layer_index: int,
        head_offset: int = 0,
        num_heads: int | None = None,
        scale: float | None = None,
    ) -> torch.Tensor:
        """Record thresholds for this call's heads; return dense attention (B, H, N, D)."""
        if num_heads is not None:
            self.num_heads[layer_index] = num_heads
        t = calibrate_layer(q, k, v, scale=scale, **self.settings)  # type: ignore[arg-type]
        per_head = self.layers.setdefault(layer_index, {})
        for i, cdf in enumerate(t.cdf_threshold):
            lam = None if t.pv_threshold is None else t.pv_threshold[i]
            l1 = t.rel_l1[i] if t.rel_l1 is not None else math.nan
            g = head_offset + i
            if g in per_head:
                # NOTE: across calls keep the most conservative: the larger cdf, the more negative λ.
                old_cdf, old_lam, old_l1 = per_head[g]
                cdf = max(cdf, old_cdf)
                lam = None if lam is None or old_lam is None else min(lam, old_lam)
                l1 = max(l1, old_l1)
            per_head[g] = (cdf, lam, l1)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)

    def result(self) -> SparseThresholds:
        """The thresholds recorded so far; every layer must have seen all of its heads."""
        if not self.layers:
            raise ValueError(
                "ThresholdCalibrator saw no attention call; run the model with it as attn op first"
            )
        layers = {}
        for li, per_head in self.layers.items():
            heads = sorted(per_head)
            want = self.num_heads.get(li, len(heads))
            if heads != list(range(want)):
                raise ValueError(
                    f"layer {li}: calibrated heads {heads} are not 0..{want - 1} (check head_offset; under "
                    "Ulysses each rank sees only its own heads, so calibrate in one process)"
                )
            vals = [per_head[h] for h in heads]
            lams = [x[1] for x in vals]
            layers[li] = LayerThresholds(
                cdf_threshold=[x[0] for x in vals],
                pv_threshold=None if any(x is None for x in lams) else lams,  # type: ignore[misc]
                rel_l1=[x[2] for x in vals],
            )
        s = self.settings
        # NOTE: the file records the budget (what the thresholds promise), not the margin's target.
        return SparseThresholds(
            backend=str(s["backend"]),
            l1_budget=float(s["l1_budget"]),  # type: ignore[arg-type]
            q_block=int(s["q_block"]),  # type: ignore[call-overload]
            k_block=int(s["k_block"]),  # type: ignore[call-overload]
            sim_threshold=float(s["sim_threshold"]),  # type: ignore[arg-type]
            layers=layers,
        )

    def save(self, path: str | Path) -> Path:
        """Write :meth:`result` as JSON (a folder gets ``sparse_attention.json``); return the path."""
        return self.result().save(path)


@torch.no_grad()
def held_out_l1(
    thresholds: SparseThresholds,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    layer_index: int,
    scale: float | None = None,
    pv_dtype: str = "auto",
) -> torch.Tensor:
    """Relative L1 per head (H,) of ``thresholds``' backend on one layer's q, k, v against fp32 dense.

    For verifying a calibration on inputs it did not see; like the calibration, it measures
    exactly the predicted mask (what the Triton, native and tiled paths compute; the fused path
    computes a superset), on the path ``kernel="auto"`` runs.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    t = thresholds.for_layer(layer_index, heads=q.shape[1])
    quantize = thresholds.backend == "sparse_sage"
    pv = resolve_pv_dtype(pv_dtype, device=q.device, in_dtype=q.dtype) if quantize else "fp32"
    lam = None if t.pv_threshold is None else torch.tensor(t.pv_threshold)
    opts = {
        "q_block": thresholds.q_block,
        "k_block": thresholds.k_block,
        "pv_dtype": pv,
        "quantize": quantize,
    }
    return _head_l1(
        q,
        k,
        v,
        dense_reference(q, k, v, scale=scale),
        scale=scale,
        sim_threshold=thresholds.sim_threshold,
        cdf=torch.tensor(t.cdf_threshold),
        pv_threshold=lam,
        kernel=_measured_kernel(q, opts, lam=lam),
        **opts,
    )


def _measured_kernel(q: torch.Tensor, opts: dict, *, lam: torch.Tensor | None) -> str:
    """The ``kernel`` that measures the exact-mask path ``"auto"`` runs: the native kernel where
    it picks it, else the PyTorch path (the Triton kernel's mask; see :func:`_head_l1`)."""
    return "native" if cpu_path("auto", q, **opts, lam=lam) == "native" else "torch"
