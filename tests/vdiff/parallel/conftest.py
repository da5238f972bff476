"""Run a function on several gloo processes (torch.multiprocessing.spawn) and collect its results."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# NOTE: spawned workers unpickle the test function by its module name (tests.vdiff.parallel...),
# so the repository root must be importable in them whatever way pytest was started.
ROOT = str(Path(__file__).resolve().parents[3])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def free_port() -> int:
    """A TCP port that was free a moment ago (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, out_dir: str, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    os.environ.update(WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
        # NOTE: rank 0 hosts the TCP store; leaving early would break peers still setting up groups.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn_gloo(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` on ``world_size`` gloo processes; return the results by rank."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _entry, args=(world_size, free_port(), tmp, fn, args), nprocs=world_size, start_method="fork"
        )
        return [torch.load(os.path.join(tmp, f"{r}.pt"), weights_only=True) for r in range(world_size)]


@pytest.fixture
def run_distributed() -> Callable[..., list[Any]]:
    """``run_distributed(fn, world_size, *args)``: see :func:`spawn_gloo`."""
    return spawn_gloo
