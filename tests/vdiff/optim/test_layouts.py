"""Muon and Shampoo need whole matrices: FSDP2 DTensor shards are refused at build time, clearly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from vdiff.optim import OptimConfig, build_optimizer


@pytest.fixture
def one_process_group() -> Iterator[None]:
    """A gloo group of one process (in this process), so that ``fully_shard`` can run."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class TwoBlocks(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def blocks_model() -> torch.nn.Module:
    return TwoBlocks()


@pytest.mark.parametrize("name", ["muon", "shampoo"])
def test_fsdp2_shards_are_refused_with_the_supported_layouts(one_process_group: None, name: str) -> None:
    model = blocks_model()
    fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
    with pytest.raises(ValueError, match=f"optim.name={name} needs each weight matrix whole") as err:
        build_optimizer(model, OptimConfig(name=name))
    message = str(err.value)
    assert "blocks.0.weight" in message and "DDP (parallel.dp_shard=1" in message
    assert "use optim.name=adamw" in message
    build_optimizer(model, OptimConfig(name="adamw"))  # AdamW works on shards


@pytest.mark.parametrize("name", ["muon", "shampoo"])
def test_whole_parameters_build(name: str) -> None:
    opt = build_optimizer(blocks_model(), OptimConfig(name=name))
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
