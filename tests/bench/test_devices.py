"""``bench/devices.py``: the --device/--dtype options every model benchmark shares, its timers and
peak memory (CPU paths; the CUDA paths are run by ``bench/gpu_all.sh`` on a GPU)."""

from __future__ import annotations

import argparse
import mmap
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.devices import (
    add_device_args,
    autocast,
    peak_memory_mib,
    reset_peak,
    resolve,
    sdpa_peer,
    time_call,
)

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> tuple[torch.device, torch.dtype]:
    p = argparse.ArgumentParser()
    add_device_args(p)
    return resolve(p.parse_args(argv), p)


def test_dtype_defaults() -> None:
    assert parse() == (torch.device("cpu"), torch.float32)
    assert parse("--dtype", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    if torch.cuda.is_available():
        assert parse("--device", "cuda")[1] == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
@pytest.mark.parametrize("script", ["train_step.py", "parallel_train.py", "sample.py", "eval_models.py"])
def test_cuda_without_gpu_is_a_one_line_usage_error(script: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--device", "cuda"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("use --device cpu")


def test_time_call_measures_wall_time() -> None:
    wall, cpu, out = time_call(lambda: time.sleep(0.05) or 7, torch.device("cpu"))
    assert out == 7 and 0.05 <= wall < 1.0 and cpu < wall


def test_peak_memory_sees_an_allocation() -> None:
    cpu = torch.device("cpu")
    if not reset_peak(cpu):
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    before = peak_memory_mib(cpu)
    # NOTE: fresh pages from an anonymous mapping, each one written: a 64 MiB tensor could reuse
    # free, still-resident heap that earlier tests left in malloc's arena (RSS unchanged, seen
    # in a full-suite run)
    x = mmap.mmap(-1, 64 * 2**20)
    x.write(b"\1" * len(x))
    during = peak_memory_mib(cpu)
    x.close()
    assert during - before >= 60  # MiB: the tensor's pages, resident
    reset_peak(cpu)
    assert peak_memory_mib(cpu) < during - 30  # the window restarted below the old peak


def test_cpu_contexts_change_nothing() -> None:
    q = torch.randn(1, 2, 8, 16)
    with sdpa_peer(torch.device("cpu"), torch.bfloat16), autocast(torch.device("cpu"), torch.float32):
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert out.dtype == torch.float32
