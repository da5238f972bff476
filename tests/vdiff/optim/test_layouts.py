"""The DTensor (FSDP2) path of Muon and Shampoo computes exactly what the whole-tensor path does.

One process, one-rank mesh: ``fully_shard`` turns every parameter into a DTensor, so the step
goes through the gather / shard path of vdiff.optim.gather while the numbers stay comparable
bit for bit with a plain copy of the model fed the same gradients. (Several ranks: test_distributed.py.)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from vdiff.models import videodit_tiny
from vdiff.optim import OptimConfig, ShampooConfig, build_optimizer

CONFIGS = {
    "muon": OptimConfig(name="muon", lr=0.01, weight_decay=0.1),
    "shampoo": OptimConfig(
        name="shampoo",
        lr=0.01,
        weight_decay=0.1,
        shampoo=ShampooConfig(
            max_preconditioner_dim=24, precondition_frequency=2, start_preconditioning_step=2
        ),
    ),
}


@pytest.fixture
def one_process_group() -> Iterator[None]:
    """A gloo group of one process (this one), so that ``fully_shard`` can run."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sharded_step_equals_whole_step(one_process_group: None, name: str) -> None:
    plain = videodit_tiny(num_layers=1)
    sharded = copy.deepcopy(plain)
    fully_shard(sharded, mesh=init_device_mesh("cpu", (1,)))
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    opt_plain, opt_sharded = build_optimizer(plain, CONFIGS[name]), build_optimizer(sharded, CONFIGS[name])
    for step in range(4):
        gen = torch.Generator().manual_seed(step)
        for p, q in zip(plain.parameters(), sharded.parameters()):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad = g, distribute_tensor(g.clone(), q.device_mesh, q.placements)
        opt_plain.step()
        opt_sharded.step()
    for p, q in zip(plain.parameters(), sharded.parameters()):
        assert torch.equal(p.detach(), q.full_tensor())
    a, b = opt_plain.state_dict()["state"], opt_sharded.state_dict()["state"]
    for k in a:
        for n, v in a[k].items():
            w = b[k][n]
            assert torch.equal(v, w.full_tensor() if isinstance(w, DTensor) else w), (k, n)
