"""The activation recorder, and the sparse backends on a model's recorded activations (issue 15).

References: fp64 dense attention of the recorded q, k, v; the recorder against the values the
model's attention op received (captured independently).
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from tests.vdiff.attention import activations
from vdiff.attention import attention
from vdiff.attention.metrics import attention_error
from vdiff.attention.record import ActivationRecorder, load_recordings, save_recordings


def _fp64_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    s = torch.matmul(q.double(), k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, N, N)
    return torch.matmul(torch.softmax(s, dim=-1), v.double())  # (B, H, N, D)


def _entropy(q: torch.Tensor, k: torch.Tensor) -> float:
    """Mean attention entropy over log N (1 = uniform)."""
    p = torch.softmax(torch.matmul(q.double(), k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
    return float((-(p * p.clamp_min(1e-300).log()).sum(-1)).mean() / math.log(q.shape[2]))


def test_recorder_stores_what_the_op_receives_caps_and_restores() -> None:
    model = activations.local_attention_model()
    seen: list[torch.Tensor] = []
    ops = [m.attn_op for m in model.self_attentions()]

    def spy(q, k, v, **kw):
        seen.append(q.clone())
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    for m in model.self_attentions():
        m.attn_op = spy
    x = torch.randn(1, 4, *activations.GRID, generator=torch.Generator().manual_seed(5))
    ctx = torch.zeros(1, 4, 32)
    with torch.no_grad(), ActivationRecorder(model, heads=[1], max_calls=1) as rec:
        rec.tag = {"seed": 5}
        model(x, torch.tensor([500.0]), ctx)
        model(x, torch.tensor([400.0]), ctx)  # second call of each layer: over max_calls
    assert [m.attn_op for m in model.self_attentions()] == [spy, spy]  # restored
    assert [(r.layer, r.call, r.tag) for r in rec.records] == [(0, 0, {"seed": 5}), (1, 0, {"seed": 5})]
    assert rec.dropped == 2
    n = math.prod(activations.GRID)
    assert rec.records[0].q.shape == (1, 1, n, 64)
    torch.testing.assert_close(rec.records[0].q, seen[0][:, 1:2], rtol=0, atol=0)
    small = ActivationRecorder(model, max_bytes=3 * n * 128 * 4)  # room for one call of 2 heads
    with torch.no_grad(), small:
        model(x, torch.tensor([500.0]), ctx)
    assert len(small.records) == 1 and small.dropped == 1
    for m, op in zip(model.self_attentions(), ops):
        m.attn_op = op


def test_recordings_round_trip_and_a_foreign_file_is_refused(tmp_path) -> None:
    recs = activations.recorded((0,))[:2]
    path = save_recordings(recs, tmp_path / "a.pt", meta={"name": "x"})
    back, meta = load_recordings(path)
    assert meta == {"name": "x"} and len(back) == 2
    torch.testing.assert_close(back[1].v, recs[1].v, rtol=0, atol=0)
    assert back[1].tag == recs[1].tag
    torch.save({"weights": torch.zeros(2)}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match=r"not a vdiff\.attention_activations file"):
        load_recordings(tmp_path / "b.pt")
    (tmp_path / "c.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="regenerate"):
        load_recordings(tmp_path / "c.pt")


@pytest.fixture(scope="module")
def records() -> list:
    return activations.recorded((0,))


def test_recorded_attention_is_not_uniform(records) -> None:
    # Precondition of the accuracy tests below: the model's attention is local (entropy well
    # below uniform's), and the heads differ.
    for r in records:
        per_head = [_entropy(r.q[:, h : h + 1], r.k[:, h : h + 1]) for h in range(r.q.shape[1])]
        assert max(per_head) < 0.8 and sum(per_head) / len(per_head) < 0.7, per_head
        assert abs(per_head[0] - per_head[1]) > 0.02, per_head


@pytest.mark.parametrize("kernel", ["fused", "tiled"])
@pytest.mark.parametrize("backend", ["sparse", "sparse_sage"])
def test_sparse_backends_on_recorded_activations(records, backend: str, kernel: str) -> None:
    # Every layer at every sampling step, raster order, default cdf 0.99: cos >= 0.999 and
    # relative L1 <= 0.02 against fp64 dense attention, on both PyTorch paths.
    kept = []
    for r in records:
        out = attention(r.q, r.k, r.v, backend=backend, kernel=kernel)
        err = attention_error(out, _fp64_dense(r.q, r.k, r.v))
        assert err.cos_sim >= 0.999 and err.rel_l1 <= 0.02, (r.layer, r.tag, err)
        from vdiff.attention.mask import predict_block_mask

        kept.append(float(predict_block_mask(r.q, r.k, scale=r.q.shape[-1] ** -0.5).float().mean()))
    assert min(kept) < 1.0, kept  # the mask does skip blocks on these inputs


def test_sparse_backends_on_recorded_activations_in_tile_order() -> None:
    for r in activations.recorded((1,), order="tiles"):
        for backend in ("sparse", "sparse_sage"):
            for kernel in ("fused", "tiled"):
                err = attention_error(
                    attention(r.q, r.k, r.v, backend=backend, kernel=kernel), _fp64_dense(r.q, r.k, r.v)
                )
                assert err.cos_sim >= 0.999 and err.rel_l1 <= 0.02, (backend, kernel, r.layer, r.tag, err)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernel_on_recorded_activations(records) -> None:
    # In Triton's interpreter without a GPU (tests/conftest.py), on bf16 inputs: one layer at a
    # middle step; bf16 rounding of q, k, v costs the rest of the cosine budget.
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    r = records[len(records) // 2]
    q, k, v = (x.to(dev, torch.bfloat16) for x in (r.q, r.k, r.v))
    ref = _fp64_dense(q.cpu(), k.cpu(), v.cpu())
    for backend in ("sparse", "sparse_sage"):
        err = attention_error(attention(q, k, v, backend=backend, kernel="triton").cpu(), ref)
        assert err.cos_sim >= 0.999 and err.rel_l1 <= 0.03, (backend, err)
