"""What this CPU multiplies fast: the features that pick P·V precisions and execution paths."""

from __future__ import annotations

import functools

import torch


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX or AVX512-BF16)."""
    # NOTE: CPUs without AVX512-BF16/AMX convert half-precision GEMM operands to fp32 on the fly
    # (a bf16 GEMM measured ~4x slower than fp32 on such a machine), so "auto" keeps P·V in fp32
    # there. With AMX (the Xeon of docs/benchmarks.md) a batched bf16 GEMM ran ~5x faster than
    # fp32 on one core (253 vs 50 GFLOP/s).
    cpu = getattr(torch, "cpu", None)
    probes = [getattr(cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(bool(f()) for f in probes if f is not None)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (the fused bf16 path is then faster than INT8 ``_int_mm``)."""
    return _cpu_probe("_is_amx_tile_supported")


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI INT8 dot products (what makes ``torch._int_mm`` fast)."""
    return _cpu_probe("_is_vnni_supported")


@functools.cache
def _cpu_probe(name: str) -> bool:
    probe = getattr(getattr(torch, "cpu", None), name, None)
    return bool(probe()) if probe is not None else False
