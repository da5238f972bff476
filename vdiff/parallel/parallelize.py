"""``parallelize(model, mesh, cfg)``: every parallelism applied to a VideoDiT from outside.

In order (torchtitan's): sequence parallelism (hooks and attention ops, see
:mod:`vdiff.parallel.sequence`), activation checkpointing of blocks, ``torch.compile`` of each
block, then data parallelism: FSDP2 (``fully_shard``) on each block and on the embedding and
output pieces, with bf16 parameters and fp32 gradient reduction, on a 1D mesh (FSDP) or a 2D
mesh (HSDP); or DDP when only replication was asked for. No parameter name changes, so a
checkpoint written under one layout loads under any other.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable import checkpoint
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from vdiff.parallel.config import ParallelConfig
from vdiff.parallel.mesh import ParallelMesh
from vdiff.parallel.sequence import apply_sequence_parallel

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def checkpointed_blocks(num_blocks: int, cfg: ParallelConfig) -> list[int]:
    """Indices of the blocks whose activations are recomputed in backward.

    ``full``: every block; ``selective``: every ``ac_every``-th block (the last of each group of
    ``ac_every``), trading memory for compute in between; ``none``: no block.
    """
    if cfg.activation_checkpoint == "full":
        return list(range(num_blocks))
    if cfg.activation_checkpoint == "selective":
        return [i for i in range(num_blocks) if (i + 1) % cfg.ac_every == 0]
    return []


def apply_activation_checkpointing(model: nn.Module, cfg: ParallelConfig) -> None:
    """Recompute the chosen blocks' activations in backward (PyTorch's composable ``checkpoint``)."""
    # NOTE: the composable API works by hooks on the block, so parameter names stay the same
    # (a checkpoint or an EMA copy written without activation checkpointing still matches).
    for i in checkpointed_blocks(len(model.blocks), cfg):  # type: ignore[arg-type]
        checkpoint(model.blocks[i])  # type: ignore[index]


def apply_compile(model: nn.Module) -> None:
    """``torch.compile`` each block in place (module.compile keeps parameter names)."""
    for block in model.blocks:  # type: ignore[union-attr]
        block.compile()


def apply_fsdp(model: nn.Module, mesh: ParallelMesh, cfg: ParallelConfig) -> None:
    """FSDP2 (HSDP on a 2D mesh): each block, each embedding piece and the output head, then the root."""
    dp_mesh = mesh.meshes["data_parallel"]
    param_dtype = _DTYPES[cfg.param_dtype]
    # NOTE: inputs are cast to the parameter dtype only where raw float inputs enter (latents,
    # text, time features). Blocks and the head take what flows in, so the RoPE table and the
    # timestep stay float32 (a bf16 timestep would be rounded by up to 2 of 1000).
    cast = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    keep = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False
    )
    for child in model.embed.children():  # type: ignore[union-attr]
        if any(True for _ in child.parameters()):
            fully_shard(child, mesh=dp_mesh, mp_policy=cast)
    for block in model.blocks:  # type: ignore[union-attr]
        fully_shard(block, mesh=dp_mesh, mp_policy=keep)
    fully_shard(model.unembed, mesh=dp_mesh, mp_policy=keep)  # type: ignore[arg-type]
    fully_shard(model, mesh=dp_mesh, mp_policy=keep)


def apply_ddp(model: nn.Module, mesh: ParallelMesh) -> nn.Module:
    """DDP over every rank (replicas average their gradients; sequence-parallel ranks too)."""
    group = mesh.meshes["data_parallel"].get_group()
    device_ids = [torch.cuda.current_device()] if mesh.device_type == "cuda" else None
    return DistributedDataParallel(model, process_group=group, device_ids=device_ids)


def parallelize(model: nn.Module, mesh: ParallelMesh, cfg: ParallelConfig) -> nn.Module:
    """Apply sequence parallelism, activation checkpointing, compile and FSDP2/HSDP/DDP to ``model``.

    Returns the module to call: ``model`` itself (changed in place), or a DDP wrapper around it
    (:func:`unwrap` gives the model back). Every rank must build ``model`` with the same weights
    (same seed, or the same checkpoint); FSDP keeps each rank's shard of them.
    """
    if mesh.dims.sp > 1:
        apply_sequence_parallel(model, mesh.sequence_layout())
    apply_activation_checkpointing(model, cfg)
    if cfg.compile:
        apply_compile(model)
    mode = mesh.dims.data_parallel
    if mode in ("fsdp", "hsdp"):
        apply_fsdp(model, mesh, cfg)
    elif mode == "ddp":
        if cfg.param_dtype != "float32" and dist.get_rank() == 0:
            log.warning("DDP keeps float32 parameters; param_dtype=%s applies to FSDP", cfg.param_dtype)
        return apply_ddp(model, mesh)
    return model


def shard_like_model(copy: nn.Module, mesh: ParallelMesh, cfg: ParallelConfig) -> nn.Module:
    """Shard a copy of the model (e.g. the EMA) as :func:`parallelize` shards the model.

    Under FSDP/HSDP its parameters become DTensors with the model's placements, so an update
    such as ``ema.lerp_(param)`` runs shard by shard and DCP saves and reshards it the same way;
    under DDP or on one process the copy stays whole.
    """
    if mesh.dims.data_parallel in ("fsdp", "hsdp"):
        apply_fsdp(copy, mesh, cfg)
    return copy


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the module itself): use it for checkpoints."""
    return module.module if isinstance(module, DistributedDataParallel) else module
