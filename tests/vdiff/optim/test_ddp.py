"""Under DDP (2 gloo ranks) Muon and Shampoo keep the replicas identical and match one process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from vdiff.models import videodit_tiny
from vdiff.optim import OptimConfig, ShampooConfig, build_optimizer

# NOTE: the process launcher lives in the parallel tests' conftest; import it as a module.
ROOT = str(Path(__file__).resolve().parents[3])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from tests.vdiff.parallel.conftest import spawn_gloo  # noqa: E402

CONFIGS = {
    "muon": OptimConfig(name="muon", lr=0.01),
    "shampoo": OptimConfig(
        name="shampoo",
        lr=0.01,
        shampoo=ShampooConfig(
            max_preconditioner_dim=16, precondition_frequency=1, start_preconditioning_step=2
        ),
    ),
}
GLOBAL_BATCH = 4


def train(rank: int, world_size: int, name: str) -> list[torch.Tensor]:
    """3 steps on this rank's share of a fixed global batch; returns the final weights."""
    torch.manual_seed(0)
    model = videodit_tiny(num_layers=1)
    call = DistributedDataParallel(model) if world_size > 1 else model
    opt = build_optimizer(model, CONFIGS[name])
    per = GLOBAL_BATCH // world_size
    mine = slice(rank * per, (rank + 1) * per)
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        x = torch.randn(GLOBAL_BATCH, 4, 2, 4, 4, generator=gen)[mine]  # (B, C, T, H, W)
        ctx = torch.randn(GLOBAL_BATCH, 5, 32, generator=gen)[mine]  # (B, L, D)
        t = (torch.rand(GLOBAL_BATCH, generator=gen) * 1000)[mine]
        opt.zero_grad(set_to_none=True)
        (call(x, t, ctx) - x).pow(2).mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.dist
@pytest.mark.parametrize("name", list(CONFIGS))
def test_ddp_matches_one_process(name: str) -> None:
    single = train(0, 1, name)
    rank0, rank1 = spawn_gloo(train, 2, name)
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank1))  # replicas stay bit-identical
    torch.manual_seed(0)
    init = [p.detach() for p in videodit_tiny(num_layers=1).parameters()]
    travelled = torch.cat([(a - p).flatten() for a, p in zip(single, init)]).norm()
    deviation = torch.cat([(a - b).flatten() for a, b in zip(rank0, single)]).norm()
    # NOTE: DDP sums the two half-batch gradients in another order than one full-batch backward;
    # Muon's bfloat16 Newton–Schulz and Shampoo's inverse roots of rank-deficient factors amplify
    # that round-off to ~1e-4 per weight (AdamW: 2e-6), so compare whole trajectories. Measured
    # deviation / distance travelled: muon 1.9e-3, shampoo 4.7e-4; a rank stepping on its own half
    # batch instead: ~1.0.
    assert travelled > 0.1 and deviation < 0.01 * travelled, (deviation, travelled)
