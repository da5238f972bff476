"""Accuracy metrics against closed forms, and the fp32 reference against torch SDPA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vdiff.attention.metrics import attention_error, dense_reference, relative_l1, video_like_qkv


def test_metrics_closed_form() -> None:
    ref = torch.randn(2, 3, 50, 8, dtype=torch.float64)
    same = attention_error(ref.clone(), ref)
    assert same.cos_sim == pytest.approx(1.0, abs=1e-12) and same.rel_l1 == 0.0 and same.rmse == 0.0
    scaled = attention_error(ref * 1.1, ref)
    assert scaled.cos_sim == pytest.approx(1.0, abs=1e-12)
    assert scaled.rel_l1 == pytest.approx(0.1, rel=1e-9)
    assert scaled.rmse == pytest.approx(0.1 * math.sqrt(float(ref.double().pow(2).mean())), rel=1e-9)
    assert attention_error(-ref, ref).cos_sim == pytest.approx(-1.0, abs=1e-12)
    per_head = relative_l1(
        ref * torch.tensor([1.0, 1.5, 2.0], dtype=torch.float64).view(1, 3, 1, 1), ref, dims=(0, 2, 3)
    )
    assert torch.allclose(per_head, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))


def test_metrics_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        attention_error(torch.zeros(1, 2), torch.zeros(2, 1))


def test_dense_reference_matches_sdpa() -> None:
    q, k, v = (torch.randn(1, 2, 70, 16) for _ in range(3))
    torch.testing.assert_close(
        dense_reference(q, k, v, scale=0.3), F.scaled_dot_product_attention(q, k, v, scale=0.3)
    )


def test_dense_reference_in_row_runs_equals_one_run() -> None:
    # NOTE: runs of 3 query rows (2 heads x 70 keys x 3 = 420 scores), the last one short; the
    # default at N = 16384 with 12 heads used to hold the whole 13 GB score matrix.
    q, k, v = (torch.randn(1, 2, 70, 16, dtype=torch.float64) for _ in range(3))
    whole = dense_reference(q, k, v, scale=0.3)
    runs = dense_reference(q, k, v, scale=0.3, max_scores=420)
    torch.testing.assert_close(runs, whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(whole, F.scaled_dot_product_attention(q, k, v, scale=0.3).float())


def test_video_like_attention_is_local_in_space_and_time() -> None:
    frames, height, width = 8, 16, 16
    q, k, v = video_like_qkv(batch=1, heads=2, frames=frames, height=height, width=width, head_dim=64)
    assert q.shape == k.shape == v.shape == (1, 2, frames * height * width, 64)
    assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
    p = torch.softmax(q @ k.transpose(-1, -2) * 64**-0.5, dim=-1)  # (1, 2, N, N)
    t, y, x = torch.meshgrid(*(torch.arange(s) for s in (frames, height, width)), indexing="ij")
    pos = torch.stack([t, y, x], dim=-1).reshape(-1, 3).float() / torch.tensor([1.5, 6.0, 6.0])
    dist = torch.cdist(pos, pos)  # (N, N) in the generator's length units
    near = (p * (dist <= 1.0)).sum(-1).mean(-1)[0]  # (2,) attention mass within one unit
    share = float((dist <= 1.0).float().mean())  # what uniform attention would put there
    assert share < 0.1 and (near > 0.6).all(), (near, share)
    assert near[1] > near[0]  # the second head is the sharper one
