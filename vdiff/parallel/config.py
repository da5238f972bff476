"""Parallelism config: mesh degrees and how the model is wrapped (torchtitan-style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ParallelConfig:
    """Degrees of each mesh dimension; their product must equal the world size."""

    dp_replicate: int = 1
    """data-parallel replicas (DDP when dp_shard=1, HSDP when both > 1)"""
    dp_shard: int = -1
    """FSDP2 shard degree; -1 fills the world size left after the other degrees"""
    ulysses: int = 1
    """Ulysses sequence-parallel degree (all-to-all sequence <-> heads around attention)"""
    ring: int = 1
    """ring-attention sequence-parallel degree (K/V blocks passed around the ring)"""
    cfg: int = 1
    """classifier-free-guidance parallel degree at sampling time (1 or 2)"""
    activation_checkpoint: Literal["none", "full", "selective"] = "none"
    """activation checkpointing of transformer blocks"""
    ac_every: int = 2
    """with activation_checkpoint=selective, checkpoint every k-th block"""
    compile: bool = False
    """torch.compile each transformer block"""
    param_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """FSDP2 parameter dtype for compute (gradients are reduced in float32)"""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the key for degrees that fit no world size."""
        for name in ("dp_replicate", "ulysses", "ring", "cfg"):
            if getattr(self, name) < 1:
                raise ValueError(f"parallel.{name}={getattr(self, name)} must be >= 1")
        if self.dp_shard < 1 and self.dp_shard != -1:
            raise ValueError(f"parallel.dp_shard={self.dp_shard} must be >= 1, or -1 to fill the world size")
        if self.cfg not in (1, 2):
            raise ValueError(f"parallel.cfg={self.cfg}: classifier-free guidance has 2 branches; use 1 or 2")
        if self.ac_every < 1:
            raise ValueError(f"parallel.ac_every={self.ac_every} must be >= 1")
