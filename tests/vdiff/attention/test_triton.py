"""The Triton kernels, run by Triton's CPU interpreter, against fp32 references and the PyTorch path.

There is no GPU here, so ``TRITON_INTERPRET=1`` runs the same kernel source on NumPy: this
checks indexing, masking, the online softmax, the INT8 product, the block look-up table and the
P·V skip. It cannot check speed, register pressure or shared-memory limits (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import subprocess
import sys
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

from tests.vdiff.attention import adversarial
from vdiff.attention import attention
from vdiff.attention.calibrate import calibrate_layer
from vdiff.attention.execute import block_sparse_attention, use_triton
from vdiff.attention.mask import predict_block_mask
from vdiff.attention.metrics import attention_error, dense_reference, relative_l1, video_like_qkv
from vdiff.attention.token_order import tile_permutation

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install -e .[dev])", allow_module_level=True)

MODULE = "vdiff.attention.triton_kernels"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def tk() -> ModuleType:
    """The kernels module: on CPU built for the interpreter (tests/conftest.py sets it up)."""
    mod = importlib.import_module(MODULE)
    assert DEVICE == "cuda" or mod.interpreted(), "TRITON_INTERPRET=1 must be set before triton is imported"
    return mod


def _qkv(n_q: int, n_k: int, d: int, dtype: torch.dtype, *, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, n_q, d, generator=g).to(dtype)
    k, v = (torch.randn(1, 2, n_k, d, generator=g).to(dtype) for _ in range(2))
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)


def _block_bias(mask: torch.Tensor, *, n_q: int, n_k: int, q_block: int, k_block: int) -> torch.Tensor:
    """(B, H, nqb, nkb) block mask -> (B, H, Nq, Nk) bool token mask."""
    return mask.repeat_interleave(q_block, 2).repeat_interleave(k_block, 3)[:, :, :n_q, :n_k]


def _pv(dtype: torch.dtype) -> str:
    return "fp16" if dtype == torch.float16 else "bf16"


# Tolerances: fp16 keeps 11 significant bits, bf16 8; P·V rounds P to that dtype, so outputs of
# unit-variance V agree with fp32 to ~2e-3 (fp16) and ~1.5e-2 (bf16) at worst; the LSE is fp32.
ATOL = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dense_kernel_equals_fp32_sdpa(tk: ModuleType, head_dim: int, dtype: torch.dtype) -> None:
    q, k, v = _qkv(200, 150, head_dim, dtype, seed=head_dim)  # ragged last Q and K blocks
    scale = 1 / math.sqrt(head_dim)
    out, lse = tk.triton_block_attention(q, k, v, None, scale=scale, pv_dtype=_pv(dtype))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    ref_lse = torch.logsumexp(q.float() @ k.float().transpose(-1, -2) * scale, dim=-1)
    assert out.dtype == dtype and out.shape == q.shape
    assert (out.float() - ref).abs().max() < ATOL[dtype]
    assert (lse - ref_lse).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sparse_kernel_computes_exactly_the_kept_blocks(tk: ModuleType, dtype: torch.dtype) -> None:
    q, k, v = _qkv(300, 300, 64, dtype, seed=1)
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(1, 2, 3, 5, generator=g) < 0.4
    mask[..., 4] = True  # every Q block keeps at least its last (partial) K block
    mask = mask.to(DEVICE)
    out, lse = tk.triton_block_attention(q, k, v, mask, scale=0.125, pv_dtype=_pv(dtype))
    keep = _block_bias(mask, n_q=300, n_k=300, q_block=128, k_block=64)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=keep, scale=0.125)
    s = (q.float() @ k.float().transpose(-1, -2) * 0.125).masked_fill(~keep, float("-inf"))
    assert (out.float() - ref).abs().max() < ATOL[dtype]
    assert (lse - torch.logsumexp(s, dim=-1)).abs().max() < 1e-3
    # the kept blocks matter: dense attention is far from this result
    assert (F.scaled_dot_product_attention(q.float(), k.float(), v.float()) - ref).abs().max() > 0.1


def test_sparse_kernel_rejects_a_row_without_blocks(tk: ModuleType) -> None:
    q, k, v = _qkv(128, 128, 64, torch.float16, seed=3)
    mask = torch.tensor([True, False]).view(1, 1, 1, 2).expand(1, 2, 1, 2).clone()
    mask[0, 1, 0] = False
    mask = mask.to(DEVICE)
    with pytest.raises(RuntimeError, match="keeps no K block"):
        tk.triton_block_attention(q, k, v, mask, scale=0.125, pv_dtype="fp16")


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_int8_kernel_equals_the_pytorch_sage_path(tk: ModuleType, head_dim: int, dtype: torch.dtype) -> None:
    # Both compute the same INT32 scores of the same quantised blocks; they differ only in where
    # P is rounded (online vs two-pass softmax).
    q, k, v = _qkv(256, 192, head_dim, dtype, seed=4)
    k = k + 3.0  # a large K mean: smoothing must remove it
    scale = 1 / math.sqrt(head_dim)
    full = torch.ones(1, 2, 2, 3, dtype=torch.bool, device=DEVICE)
    common = dict(scale=scale, quantize=True, pv_dtype=_pv(dtype))
    out, lse = tk.triton_block_attention(q, k, v, None, **common)
    ref, ref_lse = block_sparse_attention(q, k, v, full, need_lse=True, kernel="torch", **common)
    assert (out.float() - ref.float()).abs().max() < ATOL[dtype]
    assert (lse - ref_lse).abs().max() < 1e-4
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert attention_error(out, exact).cos_sim > 0.999


def test_fp8_pv_matches_the_pytorch_fp8_numerics(tk: ModuleType, video_qkv) -> None:
    q, k, v = (x[:, :, :640].half().to(DEVICE) for x in video_qkv)
    out, lse = tk.triton_block_attention(q, k, v, None, scale=0.125, quantize=True, pv_dtype="fp8")
    full = torch.ones(1, 2, 5, 10, dtype=torch.bool, device=DEVICE)
    ref, ref_lse = block_sparse_attention(
        q, k, v, full, scale=0.125, quantize=True, pv_dtype="fp8", need_lse=True, kernel="tiled"
    )
    # Same INT8 scores; P is rounded to e4m3 (3 mantissa bits) relative to the running maximum
    # here and to the final one there, so single values differ by up to an e4m3 step.
    assert (lse - ref_lse).abs().max() < 1e-4
    assert attention_error(out, ref).rel_l1 < 0.05
    exact = dense_reference(q.float(), k.float(), v.float())
    err = attention_error(out, exact)
    assert err.cos_sim >= 0.995 and err.rel_l1 <= 0.08, err  # sage's documented fp8 bound
    fp16 = tk.triton_block_attention(q, k, v, None, scale=0.125, quantize=True, pv_dtype="fp16")[0]
    assert attention_error(fp16, exact).rel_l1 < err.rel_l1  # fp8 did round P and V


def test_pv_skip_drops_far_blocks_like_the_pytorch_path(tk: ModuleType) -> None:
    # K block 0 holds every row's largest scores, so the running maximum equals the final one
    # after the first block and both implementations skip exactly the same blocks.
    g = torch.Generator().manual_seed(5)
    u = torch.randn(64, generator=g)
    u = u / u.norm()
    q = 2.0 * u + 0.05 * torch.randn(1, 2, 256, 64, generator=g)
    k = 0.3 * torch.randn(1, 2, 256, 64, generator=g)
    k[:, :, :64] += 1.5 * u  # scores ~3 above the other blocks: skipping them changes the output
    v = torch.randn(1, 2, 256, 64, generator=g)
    q, k, v = (x.half().to(DEVICE) for x in (q, k, v))
    full = torch.ones(1, 2, 2, 4, dtype=torch.bool, device=DEVICE)
    lam = torch.tensor([-0.5, -50.0], device=DEVICE)  # head 0 skips blocks 1-3, head 1 skips nothing
    out, lse = tk.triton_block_attention(q, k, v, None, scale=1.0, pv_dtype="fp16", pv_threshold=lam)
    ref, ref_lse = block_sparse_attention(
        q, k, v, full, scale=1.0, pv_dtype="fp16", pv_threshold=lam, need_lse=True, kernel="torch", q_group=1
    )
    dense = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=1.0)
    assert (out.float() - ref.float()).abs().max() < 2e-3
    assert (lse - ref_lse).abs().max() < 1e-3
    assert (out[:, 0].float() - dense[:, 0]).abs().max() > 1e-2  # head 0 did skip P·V blocks
    assert (out[:, 1].float() - dense[:, 1]).abs().max() < 2e-3  # head 1 did not


# Issue 15: dominant runs of keys off the block grid, eight patterns per call (one per head):
# offsets 0, 1, 31, 33, 63 modulo the K block, widths 1 to 128, several runs per row, queries off
# the Q-block grid, single queries and whole Q blocks.
_RUNS = [
    (100, 64, [(33, 64)]),
    (0, 1, [(257, 1)]),
    (128, 128, [(191, 128)]),
    (60, 16, [(31, 20), (150, 2), (420, 20)]),
    (200, 96, [(255, 7), (262, 7)]),
    (5, 200, [(449, 63)]),
    (300, 64, [(64, 64)]),
    (450, 62, [(1, 30), (97, 30), (255, 30), (383, 30)]),
]


@pytest.mark.parametrize("order", ["raster", "tiles"])
def test_kernel_keeps_dominant_runs_wherever_they_sit(tk: ModuleType, order: str) -> None:
    q, k, v = adversarial.background(heads=len(_RUNS), grid=(2, 16, 16), order=order, seed=11)
    q, k, rows = adversarial.plant(q, k, _RUNS, seed=12)
    q, k, v = (x.bfloat16().to(DEVICE) for x in (q, k, v))
    ref = adversarial.reference(q.cpu(), k.cpu(), v.cpu(), rows, scale=0.125)  # fp64 of the bf16 values
    mask = predict_block_mask(q, k, scale=0.125)
    assert mask.float().mean() < 0.7
    # the kernel computes exactly the predicted mask, as the tiled path does
    out, _ = tk.triton_block_attention(q, k, v, mask, scale=0.125, pv_dtype="bf16")
    keep = _block_bias(mask, n_q=512, n_k=512, q_block=128, k_block=64)
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=keep, scale=0.125)
    assert (out.float() - exact).abs().max() < ATOL[torch.bfloat16]
    cos = adversarial.row_cosine(attention(q, k, v, backend="sparse", kernel="triton").cpu(), ref, rows)
    assert float(cos.min()) >= adversarial.COS_MIN, cos.amin(dim=-1)
    # sparse_sage: the mask costs it what it costs sparse (against sage, the same INT8 scores of
    # every block); INT8 alone costs these rows up to ~3e-3 against fp64 (test_mask.py).
    fast = attention(q, k, v, backend="sparse_sage", kernel="triton").cpu()
    every_block = attention(q, k, v, backend="sage", kernel="triton").cpu()
    cos = adversarial.row_cosine(fast, adversarial.gather_rows(every_block.double(), rows), rows)
    assert float(cos.min()) >= adversarial.COS_MIN, cos.amin(dim=-1)
    assert float(adversarial.row_cosine(fast, ref, rows).min()) >= 0.995


def test_backends_dispatch_to_the_kernel(tk: ModuleType) -> None:
    q, k, v = _qkv(256, 256, 64, torch.bfloat16, seed=6)
    for backend in ("sage", "sparse_sage", "sparse"):
        opts = {} if backend == "sage" else {"topk": 1.0}  # every block: both paths compute the same
        fast, fast_lse = attention(q, k, v, backend=backend, kernel="triton", return_lse=True, **opts)
        ref, ref_lse = attention(q, k, v, backend=backend, kernel="torch", return_lse=True, **opts)
        assert (fast.float() - ref.float()).abs().max() < ATOL[torch.bfloat16], backend
        assert (fast_lse - ref_lse).abs().max() < 1e-2, backend


def test_kernel_choice_and_its_errors(tk: ModuleType) -> None:
    q, k, v = _qkv(128, 128, 64, torch.bfloat16, seed=7)
    opts = dict(q_block=128, k_block=64, pv_dtype="bf16", quantize=True)
    assert use_triton("triton", q, k, v, **opts)
    assert use_triton("auto", q, k, v, **opts) == (DEVICE == "cuda")  # auto takes Triton only on CUDA
    assert not use_triton("torch", q, k, v, **opts)
    with pytest.raises(ValueError, match="kernel must be one of"):
        use_triton("cuda", q, k, v, **opts)
    with pytest.raises(ValueError, match="head dim 96"):
        q96 = torch.zeros(1, 1, 128, 96, dtype=torch.bfloat16, device=DEVICE)
        use_triton("triton", q96, q96, q96, **opts)
    with pytest.raises(ValueError, match="fp16 and bf16"):
        use_triton("triton", q.float(), k.float(), v.float(), **opts)
    with pytest.raises(ValueError, match="forward-only"):
        use_triton("triton", q.float().requires_grad_(), k, v, **opts)
    with pytest.raises(ValueError, match="blocks"):
        attention(q, k, v, backend="sage", kernel="triton", q_block=32)


@pytest.mark.skipif(DEVICE == "cuda", reason="checks the error on a machine without CUDA")
def test_kernel_needs_cuda_outside_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    mod = importlib.reload(sys.modules[MODULE]) if MODULE in sys.modules else importlib.import_module(MODULE)
    try:
        assert not mod.interpreted()
        q = torch.zeros(1, 1, 128, 64, dtype=torch.bfloat16)
        with pytest.raises(ValueError, match="run on CUDA"):
            attention(q, q, q, backend="sage", kernel="triton")
    finally:
        monkeypatch.undo()
        importlib.reload(mod)  # as the environment has it again (the module fixture's interpreter)


@pytest.mark.parametrize("backend", ["sparse", "sparse_sage"])
def test_calibrated_thresholds_hold_on_the_kernel(tk: ModuleType, backend: str) -> None:
    # Calibration measures exactly the predicted mask, which is what the kernel computes, so its
    # budget holds here too, up to fp16 rounding of the inputs and P (allowance 2e-3).
    qkv = video_like_qkv(batch=1, heads=2, frames=2, height=32, width=32, head_dim=64, seed=1)
    idx = tile_permutation((2, 32, 32), tokens=2048, k_block=64)  # 8x8 tiles: a sparse mask
    q, k, v = (x.index_select(2, idx).half().to(DEVICE) for x in qkv)
    budget = 0.05
    t = calibrate_layer(
        q,
        k,
        v,
        l1_budget=budget,
        backend=backend,
        cdf_grid=(0.3, 0.7, 0.9, 0.99),
        pv_grid=[-4.0],
        pv_dtype="fp16",
    )
    kept = predict_block_mask(q, k, scale=0.125, cdf_threshold=torch.tensor(t.cdf_threshold, device=DEVICE))
    assert kept.float().mean() < 0.8  # the test exercises skipped blocks
    opts = {"pv_dtype": "fp16"} if backend == "sparse_sage" else {}
    out = attention(
        q,
        k,
        v,
        backend=backend,
        kernel="triton",
        cdf_threshold=torch.tensor(t.cdf_threshold),
        pv_threshold=torch.tensor(t.pv_threshold),
        **opts,
    )
    l1 = relative_l1(out.float(), dense_reference(q.float(), k.float(), v.float()), dims=(0, 2, 3))  # (H,)
    assert (l1 <= budget + 2e-3).all(), (l1, t)


def test_kernel_compiles_for_a100_and_h100_without_a_gpu() -> None:
    # Triton's full pipeline down to a cubin (bundled ptxas) catches what the interpreter cannot:
    # types and dot shapes a GPU architecture lacks (INT8 and fp8 MMAs). A subprocess, because
    # this process imported the module for the interpreter.
    code = """
from vdiff.attention.triton_kernels import compile_for_gpu, resource_usage
for arch, d, quant, pv, skip in [(80, 64, False, "bf16", False), (80, 128, True, "bf16", True),
                                 (90, 128, True, "fp8", True), (90, 64, True, "bf16", False)]:
    k = compile_for_gpu(arch=arch, head_dim=d, quantize=quant, pv_dtype=pv, skip_pv=skip)
    assert len(k.asm["cubin"]) > 1000 and k.metadata.shared > 0
    print(arch, d, resource_usage(k))
"""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("REG:") == 4, r.stdout
