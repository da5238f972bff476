"""What every model benchmark shares for ``--device`` / ``--dtype``: argument parsing, timers that
wait for the GPU, peak memory, the pinned SDPA peer, and the machine line printed first.

* ``--device cuda`` defaults ``--dtype`` to bfloat16 and pins SDPA's flash backend
  (``torch.nn.attention.sdpa_kernel``) for every model in the run, vdiff and peer alike, so a
  silent fallback to the math kernel cannot make either side look slow (flash takes fp16/bf16 only:
  with ``--dtype float32`` on CUDA nothing is pinned; the sampling benchmark puts flash first
  but lets its float32 VAE use another backend).
* Times are CUDA events around the call, then a synchronise (on CPU ``perf_counter``); each
  timing also reports this process's CPU time.
* Peak memory is ``torch.cuda.max_memory_allocated`` since :func:`reset_peak` on CUDA, and on
  CPU the process's peak RSS (``VmHWM``), reset through ``/proc/self/clear_refs`` where Linux
  allows it (else the peak since the process started; :func:`reset_peak` says which).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_device_args(p: argparse.ArgumentParser) -> None:
    """``--device {cpu,cuda}`` and ``--dtype {auto,float32,bfloat16,float16}`` on a parser."""
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the models run")
    p.add_argument(
        "--dtype",
        choices=["auto", *DTYPES],
        default="auto",
        help="compute dtype; auto: bfloat16 on cuda, float32 on cpu",
    )


def resolve(args: argparse.Namespace, p: argparse.ArgumentParser) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of the parsed ``--device`` / ``--dtype``; a one-line exit 2 if CUDA is missing."""
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error(
            "--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False); use --device cpu"
        )
    # NOTE: the current CUDA device, without initialising CUDA here (a benchmark that forks
    # workers, as bench/parallel_train.py does, must not have touched CUDA before the fork).
    device = torch.device("cuda") if args.device == "cuda" else torch.device("cpu")
    name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    return device, DTYPES[name]


def device_name(device: torch.device) -> str:
    """The GPU's name (as the MFU peak table matches it), or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def machine_line(device: torch.device, dtype: torch.dtype) -> str:
    """One line naming the device, torch, threads and dtype, printed before any figure."""
    extra = (
        f", CUDA {torch.version.cuda}" if device.type == "cuda" else f", {torch.get_num_threads()} threads"
    )
    kind = str(dtype).removeprefix("torch.")
    return f"device: {device_name(device)}; torch {torch.__version__}{extra}; {kind}"


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result) of ``fn()``; on CUDA the wall time is CUDA
    events recorded around the call, read after a synchronise, so queued kernels are counted."""
    sync(device)
    cpu = time.process_time()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, time.process_time() - cpu, out
    wall = time.perf_counter()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def reset_peak(device: torch.device) -> bool:
    """Start a new peak-memory window; False when only the process-lifetime peak RSS is available."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # NOTE: Linux >= 4.0: VmHWM := VmRSS
        return True
    except OSError:
        return False


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory since :func:`reset_peak`: CUDA max allocated, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        sync(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


@contextlib.contextmanager
def sdpa_peer(device: torch.device, dtype: torch.dtype, *, strict: bool = True) -> Iterator[None]:
    """On CUDA in fp16/bf16, SDPA restricted to its flash backend; elsewhere SDPA's own choice.

    ``strict=False`` puts flash first but lets the other backends take what flash cannot (e.g.
    the float32 attention of a VAE that runs beside a bf16 transformer).
    """
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if strict:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                yield
        else:
            order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
            with sdpa_kernel(order, set_priority=True):
                yield
    else:
        yield


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device`` (fp32 weights, low-precision matmuls), or nothing
    for float32: what ``vdiff train`` does with ``train.bf16=true``."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
