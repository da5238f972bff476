"""The sparse and quantized backends under sequence parallelism (2 gloo ranks).

Ulysses hands the backend the full sequence of its local heads, so each rank's output must equal
the one-process backend's on those heads; ring attention calls the backend on each K shard with
``return_lse=True`` and merges, so the result must stay within the backend's documented bounds.
"""

from __future__ import annotations

import functools

import pytest
import torch

from tests.vdiff.parallel.conftest import spawn_gloo
from vdiff.attention import attention
from vdiff.attention.metrics import attention_error, dense_reference, video_like_qkv
from vdiff.attention.thresholds import LayerThresholds, SparseThresholds
from vdiff.parallel import ParallelConfig, build_mesh
from vdiff.parallel.sequence import SequenceParallelAttention

# NOTE: fp32 P·V so that one process and two agree to fp32 rounding (bf16 results may differ by
# one bf16 ulp when SDPA splits the work differently).
OPTIONS = {
    "sage": {"pv_dtype": "fp32"},
    "sparse": {"cdf_threshold": 0.99},
    "sparse_sage": {"cdf_threshold": 0.99, "pv_dtype": "fp32"},
}
# Per-head calibrated thresholds, far apart so that a rank using another head's would differ.
THRESHOLDS = SparseThresholds(
    backend="sparse",
    l1_budget=0.05,
    q_block=128,
    k_block=64,
    sim_threshold=0.3,
    layers={0: LayerThresholds(cdf_threshold=[0.5, 0.999], pv_threshold=None)},
)


def _qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1, 2, 1536, 64) video-like q, k, v (the attention fixture's)."""
    return video_like_qkv(batch=1, heads=2, frames=12, height=8, width=16, head_dim=64, seed=1)


def _run(rank: int, world_size: int, mode: str) -> dict[str, dict]:
    """Each backend's output shard on this rank, with Ulysses (inner op) or ring (ring_backend)."""
    mesh = build_mesh(ParallelConfig(**{mode: world_size}))
    layout = mesh.sequence_layout()
    q, k, v = _qkv()
    layout.valid_len = q.shape[2]
    q, k, v = (layout.shard(t, dim=2) for t in (q, k, v))  # (B, H, N/2, D)
    results = {}
    with torch.no_grad():
        for backend, opts in OPTIONS.items():
            if mode == "ulysses":
                inner = functools.partial(attention, backend=backend, **opts)
                op = SequenceParallelAttention(inner=inner, layout=layout)
            else:  # NOTE: ring calls the backend with its default options and return_lse=True
                op = SequenceParallelAttention(inner=attention, layout=layout, ring_backend=backend)
            results[backend] = {"sp_rank": mesh.rank("sp"), "out": op(q, k, v)}
        if mode == "ulysses":
            # NOTE: the wrapper must tell the backend its heads (head_offset, num_heads).
            inner = functools.partial(attention, backend="sparse", thresholds=THRESHOLDS, layer_index=0)
            op = SequenceParallelAttention(inner=inner, layout=layout)
            results["calibrated"] = {"sp_rank": mesh.rank("sp"), "out": op(q, k, v)}
    return results


@pytest.mark.dist
def test_ulysses_gives_each_backend_the_full_sequence_of_its_heads() -> None:
    per_rank = spawn_gloo(_run, 2, "ulysses")
    q, k, v = _qkv()
    threads = torch.get_num_threads()
    # NOTE: one thread as in the workers, so that reductions run in the same order and no block
    # at the cdf boundary flips between the two runs.
    torch.set_num_threads(1)
    try:
        for backend, opts in OPTIONS.items():
            shards = sorted((r[backend] for r in per_rank), key=lambda r: r["sp_rank"])
            got = torch.cat([s["out"] for s in shards], dim=2)  # (B, H, N, D)
            # NOTE: rank r attended head r over all tokens; the same call in one process must agree.
            ref = torch.cat(
                [
                    attention(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], backend=backend, **opts)
                    for h in range(2)
                ],
                dim=1,
            )
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        shards = sorted((r["calibrated"] for r in per_rank), key=lambda r: r["sp_rank"])
        got = torch.cat([s["out"] for s in shards], dim=2)
        ref = attention(q, k, v, backend="sparse", thresholds=THRESHOLDS, layer_index=0)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.dist
def test_ring_merges_backend_results_by_their_lse() -> None:
    per_rank = spawn_gloo(_run, 2, "ring")
    q, k, v = _qkv()
    ref = dense_reference(q, k, v)
    for backend in OPTIONS:
        shards = sorted((r[backend] for r in per_rank), key=lambda r: r["sp_rank"])
        err = attention_error(torch.cat([s["out"] for s in shards], dim=2), ref)
        assert err.cos_sim >= 0.999 and err.rel_l1 <= 0.01, (backend, err)
