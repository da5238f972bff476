"""The state-size count (vdiff.optim.memory) against the state each optimizer really allocates."""

from __future__ import annotations

import pytest
import torch

from vdiff.models import build_model, videodit_tiny
from vdiff.optim import OptimConfig, ShampooConfig, build_optimizer
from vdiff.optim.memory import main, state_bytes

CONFIGS = {
    "adamw": OptimConfig(name="adamw"),
    "muon": OptimConfig(name="muon"),
    "shampoo": OptimConfig(name="shampoo"),
    # blocks smaller than the tiny model's dims, and no first moment
    "shampoo-blocked": OptimConfig(
        name="shampoo", betas=(0.0, 0.999), shampoo=ShampooConfig(max_preconditioner_dim=16)
    ),
}


def allocated_state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_count_equals_the_state_a_step_allocates(name: str) -> None:
    torch.manual_seed(0)
    model = videodit_tiny(num_layers=2)  # has (1, 6, 32) and (1, 2, 32) modulation tables
    opt = build_optimizer(model, CONFIGS[name])
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    assert len(opt.state) == sum(1 for _ in model.parameters())
    assert state_bytes(model, CONFIGS[name]) == allocated_state_bytes(opt)


def test_meta_model_counts_like_the_real_one() -> None:
    torch.manual_seed(0)
    real, meta = build_model("tiny"), build_model("tiny", device="meta")
    for cfg in CONFIGS.values():
        assert state_bytes(meta, cfg) == state_bytes(real, cfg)


def test_frozen_parameters_hold_no_state() -> None:
    model = videodit_tiny(num_layers=1)
    full = state_bytes(model, CONFIGS["adamw"])
    model.blocks.requires_grad_(False)
    frozen = sum(p.numel() for p in model.blocks.parameters())
    # AdamW: exp_avg + exp_avg_sq (fp32) and a 4-byte step per parameter tensor
    n_tensors = sum(1 for _ in model.blocks.parameters())
    assert full - state_bytes(model, CONFIGS["adamw"]) == 8 * frozen + 4 * n_tensors


def test_cli_prints_a_row_per_optimizer(capsys: pytest.CaptureFixture[str]) -> None:
    main(["tiny"])
    out = capsys.readouterr().out
    assert out.count("| adamw |") == 1 and out.count("| shampoo") == 2 and "| muon" in out
    # AdamW keeps exactly two fp32 copies: 8 bytes per parameter plus 4 per tensor
    row = next(line for line in out.splitlines() if line.startswith("| adamw |"))
    assert 8.0 <= float(row.split("|")[3]) < 8.1
