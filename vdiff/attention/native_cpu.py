"""The native CPU execution path: one fused INT8 kernel in C (``native/sage_cpu.c``), built at first use.

Per (batch x head, Q block) row of the block mask and per kept K block, the kernel keeps the
scores of 4 query rows in registers: INT8 Q·Kᵀ by AVX512-VNNI, scale, online softmax in base 2,
P rounded to bf16, P·V by AVX512-BF16 with fp32 accumulation. No score tile goes to memory,
which is what held the tiled PyTorch path back (its INT32 tile of one 128-query row at N = 16384
is 6.6 MB against a 2 MB L2; docs/benchmarks.md). Numerics: those of
:mod:`vdiff.attention.quant` (INT8 Q and K with power-of-two block scales, exact INT32 sums,
P·V in bf16), over exactly the mask, like the tiled path.

It runs on x86 CPUs with AVX512-F/BW/VL, AVX512-VNNI and AVX512-BF16 (e.g. AMD Zen 4, Intel
Sapphire Rapids), Linux, with a C compiler (``$CC`` or ``cc``) that takes ``-fopenmp``; the
shared library is cached under ``$VDIFF_CACHE_DIR`` (default ``~/.cache/vdiff``), keyed by the
source, flags and compiler. ``VDIFF_NATIVE=0`` turns it off. Where any of that is missing,
:func:`unavailable_reason` says why and the dispatcher uses the PyTorch paths. Forward only.
The kernel's threads are the OpenMP runtime's that torch already loaded (same ``libgomp.so.1``),
``torch.get_num_threads()`` of them.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from vdiff.attention.layout import to_blocks
from vdiff.attention.quant import smooth_and_quantize

SOURCE = Path(__file__).with_name("native") / "sage_cpu.c"
CFLAGS = (
    "-O3", "-fopenmp", "-fPIC", "-shared", "-std=gnu11",
    "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mavx512bf16", "-mfma",
)  # fmt: skip
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16")
"""/proc/cpuinfo flags the kernel needs"""
K_BLOCK = 64
"""the only K block the kernel takes (four 16-lane vectors of keys)"""
LOG2E = math.log2(math.e)


def supports(
    q: torch.Tensor,
    *,
    q_block: int,
    k_block: int,
    pv_dtype: str,
    quantize: bool,
    lam: torch.Tensor | None = None,
    needs_grad: bool = False,
) -> str | None:
    """Why the native kernel cannot run this call (None: it can).

    It takes INT8 Q·Kᵀ (``quantize``) with bf16 P·V, no gradients, CPU tensors, head dims that
    are multiples of 64, K blocks of 64 and Q blocks that are multiples of 4 (``lam``: any λ).
    """
    if q.device.type != "cpu":
        return "inputs are not on the CPU"
    if not quantize or pv_dtype != "bf16":
        return "it computes INT8 Q·Kᵀ with bf16 P·V only"
    if needs_grad:
        return "it is forward-only"
    if q.shape[-1] % 64 != 0 or k_block != K_BLOCK or q_block % 4 != 0:
        return f"it needs head dim % 64 == 0, k_block {K_BLOCK} and q_block % 4 == 0"
    return unavailable_reason()


def unavailable_reason() -> str | None:
    """Why this machine cannot run the kernel (CPU, OS, compiler, ``VDIFF_NATIVE=0``), or None."""
    if os.environ.get("VDIFF_NATIVE", "1") == "0":
        return "VDIFF_NATIVE=0"
    return _library()[1]


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cache_dir() -> Path:
    """Where built kernels are kept: ``$VDIFF_CACHE_DIR`` or ``~/.cache/vdiff``, then ``native/``."""
    root = os.environ.get("VDIFF_CACHE_DIR") or Path.home() / ".cache" / "vdiff"
    return Path(root) / "native"


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    """The loaded kernel library and None, or None and the reason it is unavailable (asked once)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None, f"it needs Linux on x86-64 (this is {platform.system()} on {platform.machine()})"
    missing = [f for f in CPU_FLAGS if f not in _cpu_flags()]
    if missing:
        return None, f"this CPU lacks {', '.join(missing)}"
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None, "no C compiler (set $CC or install gcc)"
    try:
        path = _build(cc)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", None) or str(e)
        reason = f"building {SOURCE.name} failed: {detail.strip().splitlines()[-1] if detail.strip() else e}"
        warnings.warn(
            f"vdiff: native CPU attention kernel unavailable, using PyTorch paths ({reason})", stacklevel=2
        )
        return None, reason
    fn = lib.vdiff_sage_attention
    fn.argtypes = [ctypes.c_void_p] * 12 + [ctypes.c_int64] * 7 + [ctypes.c_int]
    fn.restype = ctypes.c_int
    return lib, None


def _build(cc: str) -> Path:
    """Compile :data:`SOURCE` into the cache (atomic rename: concurrent ranks build safely)."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode() + version.encode()).hexdigest()[:16]
    out = cache_dir() / f"sage_cpu-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run(
            [cc, *CFLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True, check=True
        )
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def native_block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float,
    q_block: int,
    k_block: int,
    smooth_k: bool = True,
    need_lse: bool = True,
    lam: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax attention of q (B, H, Nq, D) over exactly the K blocks ``mask`` (B, H, nqb, nkb) keeps.

    INT8 Q·Kᵀ (:func:`~vdiff.attention.quant.smooth_and_quantize`), bf16 P·V. ``lam``: per-head
    (H,) λ ≤ 0 of the P·V skip, or None: P·V of a kept block is skipped when, for every real query
    row of the Q block, the block's largest score is below the row's *running* maximum by more
    than |λ| (SpargeAttn's rule, as the Triton kernel applies it; the normaliser still counts the
    block). Returns out
    (B, H, Nq, D) in q's dtype and the log-sum-exp (B, H, Nq) fp32 (None unless ``need_lse``).
    Call :func:`supports` first; this raises RuntimeError where the kernel is unavailable.
    """
    lib, reason = _library()
    if lib is None:
        raise RuntimeError(f"native CPU attention kernel unavailable: {reason}")
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    nq, nk = math.ceil(n_q / q_block), math.ceil(n_k / k_block)
    bh = b * h
    qi, q_scale, ki, k_scale, offset = smooth_and_quantize(
        q, k, scale=scale, q_block=q_block, k_block=k_block, smooth_k=smooth_k
    )
    q_u8, k_pack, k_corr, v_pack = _pack(qi, ki, v, q_block=q_block, k_block=k_block)
    rows = mask.reshape(bh * nq, nk)
    counts = rows.sum(dim=-1)  # (R,)
    if bool((counts == 0).any()):
        raise RuntimeError("block mask keeps no K block for some Q block; keep at least one")
    row_ptr = torch.zeros(bh * nq + 1, dtype=torch.int64)
    row_ptr[1:] = counts.cumsum(0)
    cols = rows.nonzero()[:, 1].to(torch.int32).contiguous()  # (kept,), ascending within each row
    order = counts.argsort(descending=True, stable=True).contiguous()  # heaviest rows first
    q_sc = (q_scale.reshape(bh, nq).float() * LOG2E).contiguous()  # base-2 softmax
    k_sc = k_scale.reshape(bh, nk).float().contiguous()
    out = torch.empty(bh, nq * q_block, d)  # (BH, nq*bq, D) fp32
    lse = torch.empty(bh, nq * q_block) if need_lse else None
    lam2 = None
    if lam is not None:  # (H,) natural-log units -> (B*H,) base 2, as the scores
        lam2 = (lam.float().cpu().reshape(1, h).expand(b, h) * LOG2E).contiguous().view(bh)
    args = (q_u8, q_sc, k_pack, k_corr, k_sc, v_pack, row_ptr, cols, order)
    rc = lib.vdiff_sage_attention(
        *(t.data_ptr() for t in args),
        None if lam2 is None else lam2.data_ptr(),
        out.data_ptr(),
        None if lse is None else lse.data_ptr(),
        bh, nq, nk, q_block, n_q, n_k, d, torch.get_num_threads(),
    )  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"native CPU attention kernel failed (code {rc}: 1 bad shape, 2 out of memory)")
    o = out.view(b, h, nq * q_block, d)[:, :, :n_q].to(q.dtype)
    if lse is None:
        return o, None
    return o, lse.view(b, h, nq * q_block)[:, :, :n_q] + offset


def _pack(
    qi: torch.Tensor, ki: torch.Tensor, v: torch.Tensor, *, q_block: int, k_block: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel's operand layouts, zero-padded to whole blocks (:func:`~vdiff.attention.layout.to_blocks`).

    Returns q_u8 (BH, nq, bq, D) uint8 = q_int8 + 128 (VNNI multiplies unsigned by signed bytes),
    k_pack (BH, nk, D/4, bk, 4) int8 (four channels of a key per 32-bit lane), k_corr (BH, nk*bk)
    int32 = 128·Σ_d k (removes the +128 again) and v_pack (BH, nk, bk/2, D, 2) bf16 (two keys of
    a channel per 32-bit lane).
    """
    d = qi.shape[-1]
    # NOTE: flipping the sign bit maps int8 x to the unsigned byte x + 128 (padding 0 -> 128).
    q_u8 = to_blocks(qi, block=q_block).view(torch.uint8) ^ 128  # (BH, nq, bq, D)
    k_blk = to_blocks(ki, block=k_block)  # (BH, nk, bk, D) int8
    bh, nk = k_blk.shape[:2]
    k_pack = k_blk.reshape(bh, nk, k_block, d // 4, 4).permute(0, 1, 3, 2, 4).contiguous()
    k_corr = k_blk.sum(dim=-1, dtype=torch.int32).mul_(128).reshape(bh, nk * k_block)
    v_blk = to_blocks(v.to(torch.bfloat16), block=k_block)  # (BH, nk, bk, D)
    v_pack = v_blk.reshape(bh, nk, k_block // 2, 2, d).permute(0, 1, 2, 4, 3).contiguous()
    return q_u8, k_pack, k_corr, v_pack
