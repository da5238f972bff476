"""Independent work items (files) split across the ranks of a ``torchrun`` job, and agreeing on the results.

For jobs such as latent caching, where every item (a source shard) is processed on its own and
written to its own output: :func:`rank_share` deals the items out, :func:`from_rank0` makes every
rank use rank 0's view of what is left to do, :func:`gather_strings` brings each item's
result string (e.g. a sha256) to every rank, and :func:`failed_rank` lets all ranks stop together
when one failed. Without a process group (a plain process) each is the one-process answer. The
collectives use CPU tensors under gloo and CUDA tensors under NCCL.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def _group_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) without a process group."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def rank_share(items: Sequence[int], *, rank: int, world_size: int) -> list[int]:
    """The items ``rank`` takes: every ``world_size``-th one from its rank on (round robin).

    Every item goes to exactly one rank, and the shares differ in length by at most one.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    return list(items[rank::world_size])


def from_rank0(values: Sequence[int]) -> list[int]:
    """Rank 0's ``values`` on every rank (the same length everywhere; other ranks' values are ignored)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.int64, device=_group_device())  # (n,)
    dist.broadcast(t, src=0)
    return [int(v) for v in t.tolist()]


def failed_rank(failed: bool) -> int | None:
    """On every rank: the lowest rank that passed ``failed=True``, or None when none did."""
    if not dist.is_initialized():
        return 0 if failed else None
    rank, size = world()
    t = torch.tensor([rank if failed else size], dtype=torch.int64, device=_group_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    first = int(t.item())
    return None if first == size else first


def gather_strings(values: dict[int, str], *, n: int, width: int) -> list[str | None]:
    """Every rank's ``{item: ASCII string of at most width chars}`` merged, as a list over the n items.

    Each item must be set on at most one rank; items set nowhere are None.
    """
    rows = torch.zeros(n, width + 1, dtype=torch.int64)  # (n, 1 + width): a "set" flag, then the bytes
    for i, s in values.items():
        data = s.encode("ascii")
        if len(data) > width:
            raise ValueError(f"item {i}: {s!r} is longer than {width} characters")
        rows[i, 0] = 1
        rows[i, 1 : 1 + len(data)] = torch.tensor(list(data), dtype=torch.int64)
    if dist.is_initialized():
        rows = rows.to(_group_device())
        dist.all_reduce(rows, op=dist.ReduceOp.SUM)
        rows = rows.cpu()
    if bool((rows[:, 0] > 1).any()):
        raise ValueError("gather_strings: an item was set on more than one rank")
    return [bytes(v for v in row[1:].tolist() if v).decode("ascii") if row[0] else None for row in rows]
