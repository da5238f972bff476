"""Process groups of a sampling run under torchrun: cfg-parallel branches and sequence-parallel tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from vdiff.config import ConfigError
from vdiff.parallel.config import ParallelConfig
from vdiff.parallel.distributed import launched_world_size


@dataclass
class ParallelGroups:
    """Process groups of a sampling run (None where that degree is 1)."""

    cfg: Any = None
    """the 2 ranks that hold the cond and uncond branch of the same videos"""
    cfg_rank: int = 0
    """0 computes the conditional branch, 1 the unconditional one"""
    sequence: Any = None
    """the ranks that share one video's tokens (Ulysses × ring); the step cache agrees across them"""
    layout: Any = None
    """the ``vdiff.parallel.sequence.SequenceLayout`` of those ranks (None without sequence parallelism)"""


def check_world_size(parallel: ParallelConfig, world: int) -> None:
    """Raise unless ``parallel.cfg × ring × ulysses`` equals the ``world`` processes launched."""
    u, r, c = parallel.ulysses, parallel.ring, parallel.cfg
    if c * u * r != world:
        raise ConfigError(
            f"parallel.cfg={c} × ring={r} × ulysses={u} = {c * u * r} ranks, but {world} processes run; "
            f"launch torchrun --nproc_per_node={c * u * r} or change the degrees"
        )


def setup_distributed(parallel: ParallelConfig) -> tuple[int, ParallelGroups]:
    """Initialise torch.distributed under torchrun; return (rank, groups).

    Ranks are laid out cfg-major, then ring, then Ulysses innermost:
    ``rank = cfg_rank·S + ring_rank·U + ulysses_rank`` with S = ring·U sequence ranks.
    A script that calls this must end with ``vdiff.parallel.distributed.destroy_distributed()``
    (as ``vdiff sample`` does): a gloo rank that exits with its groups alive can abort at exit.
    """
    world = launched_world_size()
    check_world_size(parallel, world)
    if world == 1:
        return 0, ParallelGroups()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    return rank, _groups(parallel, rank)


def _groups(parallel: ParallelConfig, rank: int) -> ParallelGroups:
    """Create every group on every rank (same order everywhere); keep this rank's."""
    u, r, c = parallel.ulysses, parallel.ring, parallel.cfg
    s = u * r
    groups = ParallelGroups(cfg_rank=rank // s)

    def make(ranks: list[int]) -> Any:
        # NOTE: every rank must call new_group for every group, in the same order.
        g = dist.new_group(ranks) if len(ranks) > 1 else None
        return g if rank in ranks else "other"

    found: dict[str, Any] = {}
    for i in range(s):
        if (g := make([i + k * s for k in range(c)])) != "other":
            found["cfg"] = g
    for k in range(c):
        if (g := make(list(range(k * s, (k + 1) * s)))) != "other":
            found["sp"] = g
        for j in range(r):
            if (g := make([k * s + j * u + i for i in range(u)])) != "other":
                found["ulysses"] = g
        for i in range(u):
            if (g := make([k * s + j * u + i for j in range(r)])) != "other":
                found["ring"] = g
    groups.cfg = found.get("cfg")
    if s > 1:
        from vdiff.parallel.sequence import SequenceLayout

        groups.sequence = found["sp"]
        groups.layout = SequenceLayout(
            ulysses_group=found.get("ulysses"), ring_group=found.get("ring"), sp_group=found["sp"]
        )
    return groups
