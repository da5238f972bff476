"""Parallelism for training and sampling, applied from outside the model (torchtitan-style).

``build_mesh(cfg)`` lays the world out over named dimensions, ``parallelize(model, mesh, cfg)``
applies sequence parallelism (Ulysses, ring, or both), activation checkpointing, per-block
compile and data parallelism (FSDP2, HSDP or DDP). See docs/parallelism.md.
"""

from vdiff.parallel.config import ParallelConfig
from vdiff.parallel.mesh import MESH_DIMS, MeshError, ParallelDims, ParallelMesh, build_mesh
from vdiff.parallel.ring import merge_attention, ring_attention
from vdiff.parallel.sequence import (
    SequenceLayout,
    SequenceParallelAttention,
    SequenceParallelHandle,
    apply_sequence_parallel,
)
from vdiff.parallel.ulysses import check_heads, ulysses_attention

__all__ = [
    "MESH_DIMS",
    "MeshError",
    "ParallelConfig",
    "ParallelDims",
    "ParallelMesh",
    "SequenceLayout",
    "SequenceParallelAttention",
    "SequenceParallelHandle",
    "apply_sequence_parallel",
    "build_mesh",
    "check_heads",
    "merge_attention",
    "ring_attention",
    "ulysses_attention",
]
