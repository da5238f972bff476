"""Joining a ``torchrun`` job, and the few collectives a training loop needs around the model."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def launched_world_size() -> int:
    """The number of processes torchrun started (1 when run as a plain process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (env ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).

    NCCL on CUDA (each process on GPU ``LOCAL_RANK``), gloo on CPU. A plain single process, or
    one whose group is already initialised, is left as it is. Returns this rank's device.
    """
    if launched_world_size() <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return device


def destroy_distributed() -> None:
    """Leave the process group (after a barrier, so no rank tears down what others still use)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    """Global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def mean_over(value: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Average a scalar over ``group`` (e.g. per-rank losses over data-parallel ranks); None: as is."""
    if group is None:
        return value.detach()
    out = value.detach().clone()
    # NOTE: SUM then divide: gloo has no AVG reduction.
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out / dist.get_world_size(group)


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (so all ranks stop at the same step)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def full_value(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor (e.g. the grad norm ``clip_grad_norm_`` returns under FSDP)."""
    return x.full_tensor() if isinstance(x, DTensor) else x
