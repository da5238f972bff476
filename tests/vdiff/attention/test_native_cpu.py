"""The native CPU kernel (vdiff/attention/native/sage_cpu.c) against fp64 references and the tiled path.

References: fp64 softmax attention over exactly the block mask (and its log-sum-exp), and the
tiled PyTorch path, which computes the same INT8 integers. Shapes the kernel must pad (Nq and
Nk not multiples of the blocks, cross-attention), batches, bf16 inputs, both head dims of the
issue, any thread count. The adversarial dominant-run checks run it too (test_mask.py).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vdiff.attention import attention, native_cpu
from vdiff.attention.execute import block_sparse_attention, cpu_path
from vdiff.attention.metrics import video_like_qkv
from vdiff.attention.quant import smooth_and_quantize

REASON = native_cpu.unavailable_reason()
needs_kernel = pytest.mark.skipif(REASON is not None, reason=f"native kernel unavailable: {REASON}")
KW = {"quantize": True, "pv_dtype": "bf16"}


def _masked_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, scale: float, q_block: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 attention (B, H, Nq, D) and log-sum-exp (B, H, Nq) over the q_block x 64 blocks of ``mask``."""
    n_q, n_k = q.shape[2], k.shape[2]
    keep = mask.repeat_interleave(q_block, 2)[:, :, :n_q].repeat_interleave(64, 3)[..., :n_k]  # B,H,Nq,Nk
    s = (q.double() @ k.double().transpose(-1, -2) * scale).masked_fill(~keep, float("-inf"))
    return torch.softmax(s, dim=-1) @ v.double(), torch.logsumexp(s, dim=-1)


def _random_mask(
    b: int, h: int, n_q: int, n_k: int, *, keep: float, seed: int, q_block: int = 128
) -> torch.Tensor:
    """(B, H, nqb, nkb) bool, ~``keep`` of the blocks, at least one per row (the last, partial one)."""
    g = torch.Generator().manual_seed(seed)
    nq, nk = math.ceil(n_q / q_block), math.ceil(n_k / 64)
    mask = torch.rand(b, h, nq, nk, generator=g) < keep
    mask[..., -1] = True  # the padded last K block is always in play
    return mask


@needs_kernel
@pytest.mark.parametrize(
    ("b", "h", "n_q", "n_k", "d"),
    [(1, 2, 512, 512, 64), (2, 3, 1000, 777, 64), (1, 2, 300, 1100, 128), (1, 1, 5, 63, 128)],
)
def test_matches_fp64_attention_over_exactly_the_mask(b: int, h: int, n_q: int, n_k: int, d: int) -> None:
    g = torch.Generator().manual_seed(n_q + n_k)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for n in (n_q, n_k, n_k))
    k = k + 0.5  # a mean for K smoothing to remove (the LSE must put it back)
    mask = _random_mask(b, h, n_q, n_k, keep=0.5, seed=d)
    scale = d**-0.5
    out, lse = block_sparse_attention(q, k, v, mask, scale=scale, kernel="native", **KW)
    ref, ref_lse = _masked_reference(q, k, v, mask, scale=scale)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == q.shape[:3]
    cos = F.cosine_similarity(out.double(), ref, dim=-1)  # (B, H, Nq)
    assert float(cos.min()) >= 0.999
    assert float((out.double() - ref).abs().sum() / ref.abs().sum()) <= 0.03
    torch.testing.assert_close(lse.double(), ref_lse, atol=0.02, rtol=0)
    # the same INT8 integers as the tiled path: the two agree far better than either with fp64
    tiled, tiled_lse = block_sparse_attention(q, k, v, mask, scale=scale, kernel="tiled", **KW)
    assert float(F.cosine_similarity(out, tiled, dim=-1).min()) >= 0.9999
    torch.testing.assert_close(lse, tiled_lse, atol=2e-3, rtol=0)


@needs_kernel
@pytest.mark.parametrize("q_block", [4, 64, 256])
def test_other_q_blocks(q_block: int) -> None:
    g = torch.Generator().manual_seed(q_block)
    q, k, v = (torch.randn(1, 2, 300, 64, generator=g) for _ in range(3))
    mask = _random_mask(1, 2, 300, 300, keep=0.5, seed=q_block, q_block=q_block)
    out, lse = block_sparse_attention(q, k, v, mask, scale=0.125, q_block=q_block, kernel="native", **KW)
    ref, ref_lse = _masked_reference(q, k, v, mask, scale=0.125, q_block=q_block)
    tiled, _ = block_sparse_attention(q, k, v, mask, scale=0.125, q_block=q_block, kernel="tiled", **KW)
    # rows over few keys carry INT8's error more visibly (q_block 4: single 44-key blocks); the
    # kernel is held to the tiled path's error over the same blocks
    cos, cos_tiled = (F.cosine_similarity(x.double(), ref, dim=-1) for x in (out, tiled))
    assert float(cos.min()) >= min(0.999, float(cos_tiled.min()) - 1e-3)
    assert float(F.cosine_similarity(out, tiled, dim=-1).min()) >= 0.9999
    torch.testing.assert_close(lse.double(), ref_lse, atol=0.02, rtol=0)


@needs_kernel
def test_dropped_blocks_are_not_computed() -> None:
    # V is one-hot per K block: the output's mass on a block is the attention it got; a dropped
    # block must get exactly none, a kept one its share
    n, d = 512, 64
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 1, n, d, generator=g) * 0.1 for _ in range(2))
    v = torch.zeros(1, 1, n, d)
    v[0, 0, torch.arange(n), torch.arange(n) // 64] = 1.0  # key j votes for channel j // 64
    mask = torch.zeros(1, 1, 4, 8, dtype=torch.bool)
    mask[0, 0, 0, [1, 6]] = mask[0, 0, 1, 0] = mask[0, 0, 2, :] = mask[0, 0, 3, [3, 4, 7]] = True
    out, _ = block_sparse_attention(q, k, v, mask, scale=0.125, kernel="native", need_lse=False, **KW)
    got = out[0, 0, :, :8].view(4, 128, 8)  # (Q block, query, K block)
    assert torch.equal(got > 0, mask[0, 0][:, None, :].expand(4, 128, 8))
    torch.testing.assert_close(got.sum(-1), torch.ones(4, 128), atol=1e-2, rtol=0)


@needs_kernel
def test_backends_use_it_and_bf16_inputs_keep_their_dtype() -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 4, 2048, 128, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()
    for backend in ("sage", "sparse_sage"):
        out = attention(q, k, v, backend=backend, kernel="native")
        assert float(F.cosine_similarity(out.flatten(), ref.flatten(), dim=0)) >= 0.9995
    half = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), backend="sage", kernel="native")
    assert half.dtype == torch.bfloat16
    assert float(F.cosine_similarity(half.float().flatten(), ref.flatten(), dim=0)) >= 0.999


@needs_kernel
def test_result_does_not_depend_on_the_thread_count() -> None:
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 3, 1000, 64, generator=g) for _ in range(3))
    mask = _random_mask(1, 3, 1000, 1000, keep=0.6, seed=4)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(block_sparse_attention(q, k, v, mask, scale=0.125, kernel="native", **KW))
    finally:
        torch.set_num_threads(threads)
    for out, lse in outs[1:]:
        assert torch.equal(out, outs[0][0]) and torch.equal(lse, outs[0][1])


def test_calls_it_cannot_run_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    q = torch.zeros(1, 1, 256, 64)
    ok = {"q_block": 128, "k_block": 64, "pv_dtype": "bf16", "quantize": True, "lam": None}
    monkeypatch.setattr(native_cpu, "unavailable_reason", lambda: None)
    assert native_cpu.supports(q, **ok) is None
    assert "INT8" in native_cpu.supports(q, **{**ok, "quantize": False})
    assert "bf16" in native_cpu.supports(q, **{**ok, "pv_dtype": "fp32"})
    assert native_cpu.supports(q, **{**ok, "lam": torch.tensor([-8.0])}) is None  # λ: its own rule
    assert "forward-only" in native_cpu.supports(q, **ok, needs_grad=True)
    assert "head dim" in native_cpu.supports(torch.zeros(1, 1, 256, 32), **ok)
    assert "k_block" in native_cpu.supports(q, **{**ok, "k_block": 128})
    # "native" insists (one clear error); "auto" falls back to the PyTorch paths
    with pytest.raises(ValueError, match=r"kernel='native' cannot run this call: .*head dim"):
        attention(torch.zeros(1, 1, 256, 32), torch.zeros(1, 1, 256, 32), torch.zeros(1, 1, 256, 32),
                  backend="sage", kernel="native")  # fmt: skip
    assert cpu_path("auto", torch.zeros(1, 1, 256, 32), **ok) in ("tiled", "fused")
    monkeypatch.setattr(native_cpu, "unavailable_reason", lambda: "no C compiler (set $CC or install gcc)")
    assert cpu_path("auto", q, **ok) in ("tiled", "fused")
    with pytest.raises(ValueError, match="no C compiler"):
        cpu_path("native", q, **ok)


def test_turned_off_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VDIFF_NATIVE", "0")
    assert native_cpu.unavailable_reason() == "VDIFF_NATIVE=0"


@needs_kernel
def test_build_is_cached_and_atomic(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VDIFF_CACHE_DIR", str(tmp_path))
    import shutil

    cc = shutil.which("cc")
    first = native_cpu._build(cc)
    assert first.parent == tmp_path / "native" and first.exists()
    mtime = first.stat().st_mtime_ns
    assert native_cpu._build(cc) == first and first.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert sorted(p.name for p in (tmp_path / "native").iterdir()) == [first.name]  # no temporaries left


def test_a_failing_compiler_leaves_the_pytorch_paths(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not set(native_cpu.CPU_FLAGS) <= native_cpu._cpu_flags():
        pytest.skip("this CPU lacks the kernel's instructions: the compiler is never asked")
    monkeypatch.setenv("VDIFF_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # exits 1 without output
    with pytest.warns(UserWarning, match="native CPU attention kernel unavailable"):
        lib, reason = native_cpu._library.__wrapped__()
    assert lib is None and reason.startswith("building sage_cpu.c failed")
    assert not list((tmp_path / "native").iterdir())  # nothing half-written kept
    with pytest.raises(subprocess.CalledProcessError):
        native_cpu._build("false")


@needs_kernel
def test_ranks_that_build_at_once_share_one_library(tmp_path) -> None:
    # torchrun starts every rank at once: each builds into the same empty cache; the renames
    # are atomic, so each loads a whole library and one file remains
    code = (
        "import ctypes, shutil; from vdiff.attention import native_cpu; "
        "p = native_cpu._build(shutil.which('cc')); ctypes.CDLL(str(p)); print(p)"
    )
    env = {**os.environ, "VDIFF_CACHE_DIR": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    paths = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(paths) == 1 and [f.name for f in (tmp_path / "native").iterdir()] == [Path(paths.pop()).name]


def _lambda_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, lam: torch.Tensor
) -> tuple[torch.Tensor, int, int]:
    """fp64 attention over ``mask`` with SpargeAttn's λ rule on the running maximum, written out
    block by block on the kernel's exact INT8 scores. Returns out (1, H, N, D) and the numbers
    of (Q block, K block) pairs whose P·V was skipped and computed."""
    _, h, n, d = q.shape
    scale = d**-0.5
    qi, qs, ki, ks, _ = smooth_and_quantize(q, k, scale=scale, q_block=128, k_block=64, smooth_k=True)
    out = torch.zeros(1, h, n, d, dtype=torch.float64)
    skipped = computed = 0
    for hh in range(h):
        for qb in range(mask.shape[2]):
            rows = slice(qb * 128, min(n, qb * 128 + 128))
            qq = qi[0, hh, rows].double() * float(qs[0, hh, qb])
            m = torch.full((qq.shape[0],), -math.inf, dtype=torch.float64)
            denom = torch.zeros_like(m)
            acc = torch.zeros(qq.shape[0], d, dtype=torch.float64)
            for kb in mask[0, hh, qb].nonzero().flatten().tolist():
                keys = slice(kb * 64, min(n, kb * 64 + 64))
                s_blk = qq @ (ki[0, hh, keys].double() * float(ks[0, hh, kb])).T  # (rows, keys)
                m_blk = s_blk.amax(dim=1)
                m_new = torch.maximum(m, m_blk)
                alpha = torch.exp(m - m_new)
                p = torch.exp(s_blk - m_new[:, None])
                denom = denom * alpha + p.sum(dim=1)
                acc = acc * alpha[:, None]
                m = m_new
                if float((m_blk - m_new).max()) >= float(lam[hh]):
                    acc = acc + p @ v[0, hh, keys].double()
                    computed += 1
                else:
                    skipped += 1
            out[0, hh, rows] = acc / denom[:, None]
    return out, skipped, computed


@needs_kernel
def test_lambda_skip_follows_spargeattns_running_maximum_rule() -> None:
    q, k, v = video_like_qkv(batch=1, heads=2, frames=1, height=32, width=40, head_dim=64, seed=5)
    n = q.shape[2]  # 1280: ten Q blocks, twenty K blocks
    mask = torch.ones(1, 2, 10, 20, dtype=torch.bool)
    mask[0, 1, :, 5:9] = False  # a sparse pattern in one head
    lam = torch.tensor([-3.0, -6.0])
    kw = {"scale": 64**-0.5, "quantize": True, "pv_dtype": "bf16", "need_lse": False}
    out, _ = block_sparse_attention(q, k, v, mask, kernel="native", pv_threshold=lam, **kw)
    every, _ = block_sparse_attention(q, k, v, mask, kernel="native", **kw)
    ref, skipped, computed = _lambda_reference(q, k, v, mask, lam=lam)
    assert skipped > 0.1 * (skipped + computed)  # the rule really skips (52 of 360 pairs)
    assert float(F.cosine_similarity(out.double(), ref, dim=-1).min()) >= 0.9999
    assert not torch.allclose(out, every, atol=1e-3)  # and the skips changed the output
    assert out.shape == (1, 2, n, 64)
    # a λ that never skips (calibration's NO_SKIP) gives the unskipped output exactly
    never, _ = block_sparse_attention(
        q, k, v, mask, kernel="native", pv_threshold=torch.tensor([-1e4, -1e4]), **kw
    )
    assert torch.equal(never, every)
