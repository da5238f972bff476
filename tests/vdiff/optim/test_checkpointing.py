"""Every optimizer saves and resumes through vdiff.checkpoint (torch.distributed.checkpoint) exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vdiff.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from vdiff.models import videodit_tiny
from vdiff.optim import OptimConfig, ShampooConfig, build_optimizer

CONFIGS = {
    "adamw": OptimConfig(name="adamw", lr=1e-3, weight_decay=0.01),
    "muon": OptimConfig(name="muon", lr=1e-3, weight_decay=0.01),
    # small blocks and an early start so the saved state holds factors and inverse roots
    "shampoo": OptimConfig(
        name="shampoo",
        lr=1e-3,
        weight_decay=0.01,
        shampoo=ShampooConfig(
            max_preconditioner_dim=16, precondition_frequency=2, start_preconditioning_step=2
        ),
    ),
}


def tiny_dit() -> torch.nn.Module:
    torch.manual_seed(0)
    return videodit_tiny(num_layers=1)


def train_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, seeds: range) -> list[float]:
    losses = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 4, 2, 4, 4, generator=gen)  # (B, C, T, H, W)
        ctx = torch.randn(2, 5, 32, generator=gen)  # (B, L, D_text)
        t = torch.rand(2, generator=gen) * 1000
        opt.zero_grad(set_to_none=True)
        loss = (model(x, t, ctx) - x).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", list(CONFIGS))
def test_dcp_save_and_resume_is_exact(name: str, tmp_path: Path) -> None:
    cfg = CONFIGS[name]
    model = tiny_dit()
    opt = build_optimizer(model, cfg)
    train_steps(model, opt, range(3))
    save_checkpoint(tmp_path, step=3, model=model, optimizer=opt)
    ckpt = latest_checkpoint(tmp_path)
    expected = train_steps(model, opt, range(3, 6))

    resumed = videodit_tiny(num_layers=1)
    opt2 = build_optimizer(resumed, cfg)
    state = load_checkpoint(ckpt, model=resumed, optimizer=opt2)
    assert state["step"] == 3
    assert train_steps(resumed, opt2, range(3, 6)) == expected
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))
    a, b = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert a.keys() == b.keys() and len(a) == len(list(model.parameters()))
    for k in a:
        assert a[k].keys() == b[k].keys() and all(torch.equal(a[k][n], b[k][n]) for n in a[k])


def freeze_all_but_block_matrices(model: torch.nn.Module) -> None:
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith("blocks.") and p.ndim == 2


@pytest.mark.parametrize("name", ["muon", "shampoo"])
def test_only_block_matrices_train_as_with_lora(name: str, tmp_path: Path) -> None:
    """Frozen embedders and head, as in a LoRA run: Muon has no AdamW half; trainable-only checkpoints."""
    model = tiny_dit()
    model.unembed.proj.weight.data.normal_(
        std=0.02
    )  # NOTE: the zero-initialised head would stop all gradients
    freeze_all_but_block_matrices(model)
    opt = build_optimizer(model, CONFIGS[name])
    if name == "muon":
        assert opt.adamw is None and len(opt.param_groups) == 1
    train_steps(model, opt, range(2))
    save_checkpoint(tmp_path, step=2, model=model, optimizer=opt, trainable_only=True)
    expected = train_steps(model, opt, range(2, 4))

    resumed = tiny_dit()
    resumed.unembed.proj.weight.data.copy_(model.unembed.proj.weight.data)
    freeze_all_but_block_matrices(resumed)
    opt2 = build_optimizer(resumed, CONFIGS[name])
    load_checkpoint(latest_checkpoint(tmp_path), model=resumed, optimizer=opt2, trainable_only=True)
    assert train_steps(resumed, opt2, range(2, 4)) == expected
