"""Shared inputs of the attention-backend tests (random and video-like)."""

from __future__ import annotations

import pytest
import torch

from vdiff.attention.metrics import video_like_qkv


@pytest.fixture
def random_qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1, 2, 300, 64) Gaussian q, k, v; 300 tokens leaves partial Q and K blocks."""
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, 2, 300, 64, generator=g) for _ in range(3))  # type: ignore[return-value]


@pytest.fixture
def video_qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1, 2, 1536, 64) video-like q, k, v: 12 frames of 8x16 tokens, attention local in space-time."""
    return video_like_qkv(batch=1, heads=2, frames=12, height=8, width=16, head_dim=64, seed=1)


@pytest.fixture(autouse=True)
def _sparse_paths_on_small_inputs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ``kernel="auto"`` on the sparse/INT8 paths in the numerics tests.

    On these small inputs the CPU rule (``vdiff.attention.execute.dense_is_faster``) would run
    dense SDPA instead, and the tests would check SDPA; test_auto_kernel.py tests the rule itself.
    """
    if request.module.__name__.endswith("test_auto_kernel"):
        return
    from vdiff.attention import execute

    monkeypatch.setattr(execute, "dense_is_faster", lambda **_: False)
