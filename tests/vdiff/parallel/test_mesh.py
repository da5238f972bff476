"""Mesh degrees resolved against the world size, and the errors for layouts that cannot work."""

from __future__ import annotations

import pytest

from vdiff.config import load_config
from vdiff.parallel import MeshError, ParallelConfig, ParallelDims, build_mesh, check_heads


def dims(world: int, **kw: int) -> ParallelDims:
    return ParallelDims.from_config(ParallelConfig(**kw), world)


def test_dp_shard_fills_the_world_and_modes_follow_the_degrees():
    d = dims(8, ulysses=2, ring=2)
    assert (d.dp_shard, d.dp, d.sp, d.shape) == (2, 2, 4, (1, 1, 2, 2, 2))
    assert d.data_parallel == "fsdp"
    assert dims(8).data_parallel == "fsdp" and dims(8).dp_shard == 8
    assert dims(8, dp_replicate=2, dp_shard=4).data_parallel == "hsdp"
    assert dims(8, dp_replicate=8, dp_shard=1).data_parallel == "ddp"
    assert dims(4, dp_replicate=2, dp_shard=1, ulysses=2).data_parallel == "ddp"
    assert dims(1).data_parallel == "none"
    assert dims(2, ulysses=2).data_parallel == "fsdp"  # sequence-parallel ranks shard the weights


def test_impossible_layouts_name_the_degrees_and_the_fix():
    with pytest.raises(MeshError, match=r"ulysses=4 .* does not divide the world size 6.*: \[2, 3, 6\]"):
        dims(6, ulysses=4)
    with pytest.raises(MeshError, match=r"= 4 but 8 processes were launched; set parallel.dp_shard=4"):
        dims(8, dp_shard=2, ulysses=2)
    with pytest.raises(MeshError, match=r"make the product a divisor of 6"):
        dims(6, dp_shard=1, ring=4)
    with pytest.raises(MeshError, match=r"parallel\.cfg=3"):
        dims(6, cfg=3)
    with pytest.raises(MeshError, match=r"set parallel\.cfg=1 for training"):
        dims(2, cfg=2).check_training()


def test_global_batch_splits_over_data_parallel_ranks_only():
    d = dims(8, dp_replicate=2, ulysses=2)  # dp = 2 x 2, sp = 2
    assert d.local_batch_size(8) == 2
    with pytest.raises(MeshError, match=r"train.batch_size=6 .* data-parallel degree .* = 4"):
        d.local_batch_size(6)


def test_config_validation_runs_at_load_time():
    with pytest.raises(ValueError, match=r"parallel.ring=0 must be >= 1"):
        load_config(ParallelConfig, overrides=["ring=0"])
    with pytest.raises(ValueError, match="dp_shard=-2"):
        load_config(ParallelConfig, overrides=["dp_shard=-2"])


def test_heads_not_divisible_by_ulysses_suggest_ring():
    check_heads(12, 4)
    with pytest.raises(ValueError, match=r"ulysses=5 does not divide .* 12 .*\[1, 2, 3, 4, 6, 12\].*ring"):
        check_heads(12, 5)


def test_one_process_mesh_is_trivial():
    mesh = build_mesh(ParallelConfig())
    assert mesh.world is None and mesh.dp_rank == 0 and mesh.group("sp") is None
    assert mesh.sequence_layout().degree == 1
