"""The device mesh: named dimensions resolved from a ``ParallelConfig`` and the world size.

World ranks are laid out row-major over ``(cfg, dp_replicate, dp_shard, ring, ulysses)``:
Ulysses is innermost because its all-to-alls need the fastest links (inside a node), ring
next (point-to-point, overlapped with compute), then FSDP sharding, and plain replication
outermost (one gradient all-reduce per step, the only traffic that has to cross slow links).

Derived groups (flattened sub-meshes):

* ``dp`` = dp_replicate x dp_shard: ranks that read different samples;
* ``sp`` = ring x ulysses: ranks that share the tokens of one sample;
* the data-parallel wrapper's mesh: FSDP shards parameters over dp_shard x ring x ulysses
  (sequence-parallel ranks hold the same weights, so they can shard them too) and replicates
  over dp_replicate (HSDP); with dp_shard = 1 and dp_replicate > 1, DDP over all ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from vdiff.parallel.config import ParallelConfig
from vdiff.parallel.sequence import SequenceLayout

MESH_DIMS = ("cfg", "dp_replicate", "dp_shard", "ring", "ulysses")

DataParallelMode = Literal["none", "ddp", "fsdp", "hsdp"]


class MeshError(ValueError):
    """The parallel degrees do not fit the world size; the message says what to change."""


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class ParallelDims:
    """Resolved degree of every mesh dimension (their product is the world size)."""

    world_size: int
    dp_replicate: int
    dp_shard: int
    ring: int
    ulysses: int
    cfg: int

    @classmethod
    def from_config(cls, cfg: ParallelConfig, world_size: int) -> ParallelDims:
        """Resolve ``dp_shard=-1`` and check that the degrees multiply to ``world_size``."""
        try:
            cfg.validate()
        except ValueError as e:
            raise MeshError(str(e)) from None
        named = {"dp_replicate": cfg.dp_replicate, "ulysses": cfg.ulysses, "ring": cfg.ring, "cfg": cfg.cfg}
        others = math.prod(named.values())
        listing = " x ".join(f"{k}={v}" for k, v in named.items())
        if cfg.dp_shard == -1:
            if world_size % others:
                fits = [d for d in _divisors(world_size) if d > 1]
                raise MeshError(
                    f"{listing} = {others} does not divide the world size {world_size}, so "
                    f"parallel.dp_shard=-1 cannot fill the rest; choose degrees whose product divides "
                    f"{world_size} (its divisors: {fits}) or launch a multiple of {others} processes"
                )
            dp_shard = world_size // others
        else:
            dp_shard = cfg.dp_shard
            if others * dp_shard != world_size:
                fill = (
                    f"set parallel.dp_shard={world_size // others} (or -1)"
                    if world_size % others == 0
                    else f"make the product a divisor of {world_size}"
                )
                raise MeshError(
                    f"parallel degrees {listing} x dp_shard={dp_shard} = {others * dp_shard} but "
                    f"{world_size} processes were launched; {fill}, or launch {others * dp_shard} "
                    f"processes (torchrun --nproc_per_node ... --nnodes ...)"
                )
        return cls(
            world_size=world_size,
            dp_replicate=cfg.dp_replicate,
            dp_shard=dp_shard,
            ring=cfg.ring,
            ulysses=cfg.ulysses,
            cfg=cfg.cfg,
        )

    @property
    def dp(self) -> int:
        """Data-parallel degree: how many different samples are processed at once."""
        return self.dp_replicate * self.dp_shard

    @property
    def sp(self) -> int:
        """Sequence-parallel degree: how many ranks share one sample's tokens."""
        return self.ring * self.ulysses

    @property
    def shape(self) -> tuple[int, ...]:
        """Mesh shape in ``MESH_DIMS`` order."""
        return (self.cfg, self.dp_replicate, self.dp_shard, self.ring, self.ulysses)

    @property
    def data_parallel(self) -> DataParallelMode:
        """How gradients are synchronised: DDP, FSDP2, HSDP (FSDP2 on a 2D mesh) or not at all."""
        replicate, shard = self.cfg * self.dp_replicate, self.dp_shard * self.sp
        if replicate * shard == 1:
            return "none"
        if self.dp_shard == 1 and replicate > 1:
            return "ddp"
        return "fsdp" if replicate == 1 else "hsdp"

    def local_batch_size(self, global_batch: int) -> int:
        """Samples per rank for a global batch; each sequence-parallel group shares its samples."""
        if global_batch % self.dp:
            raise MeshError(
                f"train.batch_size={global_batch} (the global batch) is not divisible by the "
                f"data-parallel degree dp_replicate x dp_shard = {self.dp}; use a multiple of {self.dp}"
            )
        return global_batch // self.dp

    def check_training(self) -> None:
        """Training uses no CFG parallelism (that is a sampling-time split of the two branches)."""
        if self.cfg != 1:
            raise MeshError(f"parallel.cfg={self.cfg} is for sampling; set parallel.cfg=1 for training")


@dataclass
class ParallelMesh:
    """The device mesh and its named sub-meshes; on one process every group is ``None``."""

    dims: ParallelDims
    device_type: str
    world: DeviceMesh | None = None
    """the full mesh with dimensions ``MESH_DIMS``"""
    meshes: dict[str, DeviceMesh] = field(default_factory=dict)
    """sub-meshes by name: the mesh dims plus ``dp``, ``sp`` and ``data_parallel``"""

    def group(self, name: str) -> dist.ProcessGroup | None:
        """The process group of a 1D sub-mesh, or ``None`` when it has a single rank."""
        mesh = self.meshes.get(name)
        if mesh is None or mesh.size() == 1:
            return None
        return mesh.get_group()

    def rank(self, name: str) -> int:
        """This process's index along a 1D sub-mesh (0 when absent)."""
        mesh = self.meshes.get(name)
        return 0 if mesh is None else mesh.get_local_rank()

    @property
    def dp_rank(self) -> int:
        """Index of this rank's data shard, in [0, dims.dp)."""
        return self.rank("dp")

    def sequence_layout(self) -> SequenceLayout:
        """The groups sequence parallelism uses on this rank."""
        return SequenceLayout(
            ulysses_group=self.group("ulysses"), ring_group=self.group("ring"), sp_group=self.group("sp")
        )


def build_mesh(
    cfg: ParallelConfig, *, device_type: str = "cpu", world_size: int | None = None
) -> ParallelMesh:
    """Resolve ``cfg`` against the world size and build the mesh (process group must be initialised).

    A single process without ``torch.distributed`` initialised gets a trivial mesh.
    """
    if world_size is None:
        world_size = dist.get_world_size() if dist.is_initialized() else 1
    dims = ParallelDims.from_config(cfg, world_size)
    if world_size == 1 and not dist.is_initialized():
        return ParallelMesh(dims=dims, device_type=device_type)
    world = init_device_mesh(device_type, dims.shape, mesh_dim_names=MESH_DIMS)
    meshes = {name: world[name] for name in MESH_DIMS}
    meshes["dp"] = world["dp_replicate", "dp_shard"]._flatten("dp")
    meshes["sp"] = world["ring", "ulysses"]._flatten("sp")
    mode = dims.data_parallel
    if mode == "fsdp":
        meshes["data_parallel"] = world["dp_shard", "ring", "ulysses"]._flatten("dp_shard_sp")
    elif mode == "ddp":
        meshes["data_parallel"] = world._flatten("dp_all")
    elif mode == "hsdp":
        # NOTE: (cfg, dp_replicate) replicate and (dp_shard, ring, ulysses) shard; unflattening
        # the whole world gives that 2D mesh without slicing flattened dims out of the root.
        replicate = dims.cfg * dims.dp_replicate
        meshes["data_parallel"] = world._flatten("dp_all")._unflatten(
            0, (replicate, world_size // replicate), ("dp_replicate", "dp_shard_sp")
        )
    return ParallelMesh(dims=dims, device_type=device_type, world=world, meshes=meshes)
