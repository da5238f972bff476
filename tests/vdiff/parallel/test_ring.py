"""Ring attention's per-block kernels against a direct computation of attention.

The ring forward merges each block's (out, LSE) and its backward feeds every block the global
(out, LSE); both rest on the kernel's LSE being the natural log-sum-exp of the scaled scores,
(B, H, Nq), and on its backward recomputing the block's slice of the *global* softmax.
"""

from __future__ import annotations

import pytest
import torch

from vdiff.parallel import ParallelConfig, build_mesh
from vdiff.parallel.ring import (
    block_attention,
    block_attention_backward,
    block_kernel,
    merge_attention,
    ring_attention,
)

B, H, D = 2, 3, 16
SCALE = 0.3  # NOTE: not 1/sqrt(D), so a kernel that ignored the scale argument would fail


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _direct(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out in float32: the output (B, H, Nq, D) and the natural-log LSE (B, H, Nq)."""
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * SCALE  # (B, H, Nq, Nk)
    return torch.matmul(torch.softmax(s, dim=-1), v.float()), torch.logsumexp(s, dim=-1)


def test_cpu_uses_the_fused_flash_kernel_except_for_float64():
    q = _randn(B, H, 4, D, seed=0)
    assert block_kernel(q, q) == "cpu_flash"
    assert block_kernel(q.bfloat16(), q.bfloat16()) == "cpu_flash"
    assert block_kernel(q.double(), q.double()) == "math"


def test_block_attention_returns_the_natural_log_sum_exp():
    q, k, v = _randn(B, H, 7, D, seed=1), _randn(B, H, 11, D, seed=2), _randn(B, H, 11, D, seed=3)
    out, lse = block_attention(q, k, v, scale=SCALE)
    ref_out, ref_lse = _direct(q, k, v)
    assert lse.shape == (B, H, 7) and lse.dtype == torch.float32
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)


def _blockwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, cuts: tuple[int, ...]):
    """Ring's maths in one process: per-block forward + merge, then per-block backward."""
    kv = torch.stack([k, v])  # (2, B, H, Nk, D): ring slices its blocks out of this, as views
    bounds = list(zip((0, *cuts), (*cuts, k.shape[2])))
    out = lse = None
    for a, b in bounds:
        out, lse = merge_attention(
            out, lse, *block_attention(q, kv[0, :, :, a:b], kv[1, :, :, a:b], scale=SCALE)
        )
    out = out.to(q.dtype)
    dq, dks, dvs = torch.zeros_like(q, dtype=torch.float32), [], []
    for a, b in bounds:
        block = (kv[0, :, :, a:b], kv[1, :, :, a:b])
        dq_b, dk_b, dv_b = block_attention_backward(dout, q, block, out, lse.contiguous(), scale=SCALE)
        dq += dq_b
        dks.append(dk_b)
        dvs.append(dv_b)
    return out, lse, dq, torch.cat(dks, dim=2), torch.cat(dvs, dim=2)


def _autograd_reference(q, k, v, dout) -> dict[str, torch.Tensor]:
    q, k, v = (t.detach().float().requires_grad_() for t in (q, k, v))
    out, lse = _direct(q, k, v)
    out.backward(dout.float())
    return {"out": out.detach(), "lse": lse.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}


def test_fused_blocks_merge_and_backprop_to_full_attention():
    """fp32: merged block outputs/LSE and summed block gradients equal autograd of the direct formula."""
    q, k, v = _randn(B, H, 9, D, seed=4), _randn(B, H, 13, D, seed=5), _randn(B, H, 13, D, seed=6)
    dout = (
        _randn(B, H, 9, D, seed=7).transpose(2, 3).contiguous().transpose(2, 3)
    )  # non-contiguous, as it arrives
    out, lse, dq, dk, dv = _blockwise(q, k, v, dout, cuts=(5, 6))  # blocks of 5, 1 and 7 keys
    ref = _autograd_reference(q, k, v, dout)
    for name, got in {"out": out, "lse": lse, "dq": dq, "dk": dk, "dv": dv}.items():
        torch.testing.assert_close(got, ref[name], rtol=1e-4, atol=1e-5, msg=name)


def test_fused_block_equals_the_math_block_given_the_global_lse():
    """One block of a longer key set: cpu_flash and the explicit-matmul kernel agree, forward and backward."""
    q, k, v, dout = (_randn(B, H, 10, D, seed=s) for s in (20, 21, 22, 23))
    out, lse = _direct(q, k, v)  # over all 10 keys
    block = (k[:, :, 3:8], v[:, :, 3:8])
    fused = block_attention(q, *block, scale=SCALE, kernel="cpu_flash")
    math = block_attention(q, *block, scale=SCALE, kernel="math")
    for a, b in zip(fused, math, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    grads = {
        kernel: block_attention_backward(dout, q, block, out, lse.contiguous(), scale=SCALE, kernel=kernel)
        for kernel in ("cpu_flash", "math")
    }
    for a, b in zip(grads["cpu_flash"], grads["math"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown block kernel 'flash'"):
        block_attention(q, *block, scale=SCALE, kernel="flash")


def test_fused_blocks_in_bfloat16_follow_float32():
    """bf16 inputs: bf16 out and gradients, float32 LSE, within bf16 rounding of the fp32 answer."""
    q, k, v, dout = (_randn(B, H, 12, D, seed=s, dtype=torch.bfloat16) for s in (8, 9, 10, 11))
    out, lse, dq, dk, dv = _blockwise(q, k, v, dout, cuts=(6,))
    assert out.dtype == dk.dtype == dv.dtype == torch.bfloat16 and lse.dtype == torch.float32
    ref = _autograd_reference(q, k, v, dout)
    for name, got in {"out": out, "lse": lse, "dq": dq, "dk": dk, "dv": dv}.items():
        torch.testing.assert_close(got.float(), ref[name], rtol=2e-2, atol=2e-2, msg=name)


@pytest.mark.parametrize("kernel", ["cuda_flash", "cuda_efficient"])
def test_cuda_kernel_calls_fit_torch_op_schemas(kernel):
    """Meta tensors run torch's shape functions: arguments, output arity and the LSE's (B, H, Nq) shape.

    NOTE: this checks the calls only; the CUDA numbers are checked by the GPU test below.
    """
    q = torch.empty(B, H, 100, 64, device="meta", dtype=torch.bfloat16)
    k = torch.empty(B, H, 40, 64, device="meta", dtype=torch.bfloat16)
    out, lse = block_attention(q, k, k, scale=0.125, kernel=kernel)
    assert out.shape == q.shape and lse.shape == (B, H, 100) and lse.dtype == torch.float32
    dq, dk, dv = block_attention_backward(q, q, (k, k), out, lse, scale=0.125, kernel=kernel)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == k.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_blocks_merge_and_backprop_to_full_attention(dtype):
    dev = "cuda"
    q, k, v = (_randn(B, H, n, 64, seed=s, dtype=dtype).to(dev) for s, n in ((12, 100), (13, 70), (14, 70)))
    dout = _randn(B, H, 100, 64, seed=15, dtype=dtype).to(dev)
    assert block_kernel(q, k) in ("cuda_flash", "cuda_efficient")
    out, lse, dq, dk, dv = _blockwise(q, k, v, dout, cuts=(33,))
    ref = _autograd_reference(q, k, v, dout)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for name, got in {"out": out, "lse": lse, "dq": dq, "dk": dk, "dv": dv}.items():
        torch.testing.assert_close(got.float(), ref[name], rtol=tol, atol=tol, msg=name)


def _ring_bf16(rank: int, world_size: int) -> dict:
    """This rank's shard of the bf16 ring output and input gradients (7 keys: the last one padding)."""
    mesh = build_mesh(ParallelConfig(ring=world_size))
    layout = mesh.sequence_layout()
    layout.valid_len = 7
    q, k, v, dout = (layout.shard(_randn(1, 2, 7, D, seed=s, dtype=torch.bfloat16), dim=2) for s in range(4))
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = ring_attention(q, k, v, group=layout.ring_group, valid_lens=(4, 3), scale=SCALE)
    out.backward(dout)
    return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}


@pytest.mark.dist
def test_bfloat16_ring_on_two_ranks_follows_float32_attention(run_distributed):
    shards = run_distributed(_ring_bf16, 2)
    ref = _autograd_reference(*(_randn(1, 2, 7, D, seed=s, dtype=torch.bfloat16) for s in range(4)))
    for name in ("out", "dq", "dk", "dv"):
        got = torch.cat([s[name] for s in shards], dim=2)[:, :, :7]  # (1, 2, 7, D): padding dropped
        assert got.dtype == torch.bfloat16, name
        torch.testing.assert_close(got.float(), ref[name], rtol=2e-2, atol=2e-2, msg=name)
