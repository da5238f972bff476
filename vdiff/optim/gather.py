"""Whole matrices from FSDP2 shards: gather a DTensor, compute on every rank, keep this rank's shard.

Muon's Newton–Schulz iteration and Shampoo's Kronecker factors need each weight matrix whole.
Under FSDP2/HSDP a parameter (and its gradient) is a DTensor holding one shard per rank:
:func:`whole` all-gathers it, every rank computes the same update of the full matrix, and
:func:`shard_like` cuts this rank's piece back out locally (no communication). Plain tensors
(one device, DDP) pass through both unchanged.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


def whole(t: torch.Tensor) -> torch.Tensor:
    """The full tensor of a DTensor (an all-gather over its mesh); a plain tensor as is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``like`` (a DTensor with ``like``'s mesh and placements), or as is.

    NOTE: ``src_data_rank=None`` slices each rank's own copy, so no data moves; every rank must
    hold the same ``full`` (they do: each computed it from the same gathered inputs).
    """
    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
