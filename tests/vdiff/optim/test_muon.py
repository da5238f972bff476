"""Muon + AdamW: which weights Muon takes, the orthogonalised update, the AdamW half, state round trip."""

from __future__ import annotations

import copy

import pytest
import torch

from vdiff.models import videodit_tiny
from vdiff.optim import MuonWithAdamW, OptimConfig, build_optimizer, decay_groups
from vdiff.optim.muon import split_muon_params

# Keller Jordan's quintic Newton–Schulz coefficients (torch.optim.Muon's defaults)
NS = (3.4445, -4.7750, 2.0315)


def tiny_dit() -> torch.nn.Module:
    torch.manual_seed(0)
    return videodit_tiny(num_layers=2)


def newton_schulz64(m: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Reference: the quintic iteration X ← aX + (bA + cA²)X, A = XXᵀ, in float64 on the wide view."""
    x = m.double()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / x.norm()
    a, b, c = NS
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def set_grads(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest() -> None:
    model = tiny_dit()
    hidden, rest = split_muon_params(model, ["blocks"])
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for p in hidden}
    assert muon_names == {
        n for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2
    } and any(".ffn." in n for n in muon_names)
    rest_names = {n for n, _ in rest}
    # embeddings, output head, modulation tables, biases and norms stay with AdamW
    for n in (
        "embed.patch.weight",
        "embed.text_embed.fc1.weight",
        "unembed.proj.weight",
        "blocks.0.modulation",
    ):
        assert n in rest_names
    assert len(muon_names) + len(rest_names) == len(list(model.parameters()))
    with pytest.raises(ValueError, match=r"optim\.muon\.modules"):
        split_muon_params(model, ["nope"])


def test_update_is_the_orthogonalised_nesterov_momentum() -> None:
    torch.manual_seed(1)
    model = torch.nn.ModuleDict(
        {"blocks": torch.nn.Linear(48, 20, bias=False), "head": torch.nn.Linear(20, 3)}
    )
    w = model["blocks"].weight  # (20, 48)
    lr, mu = 0.02, 0.95
    opt = build_optimizer(model, OptimConfig(name="muon", lr=lr, weight_decay=0.0))
    assert isinstance(opt, MuonWithAdamW)
    buf = torch.zeros_like(w, dtype=torch.float64)
    for seed in range(3):
        set_grads(model, seed)
        g = w.grad.double()
        before = w.detach().double().clone()
        opt.step()
        buf = mu * buf + (1 - mu) * g
        nesterov = g + mu * (buf - g)
        # match_rms_adamw scales the lr by 0.2·sqrt(max(A, B))
        update = (before - w.detach().double()) / (lr * 0.2 * 48**0.5)
        # NOTE: torch runs Newton–Schulz in bfloat16; 0.03 absolute on entries of size ~0.15 is bf16 noise
        torch.testing.assert_close(update, newton_schulz64(nesterov), rtol=0, atol=0.03)
        # the quintic maps every singular value into roughly [0.7, 1.2]: an orthogonalised update
        s = torch.linalg.svdvals(update)
        assert s.min() > 0.6 and s.max() < 1.25, s
        u, _, vh = torch.linalg.svd(nesterov, full_matrices=False)
        cos = (update * (u @ vh)).sum() / (update.norm() * (u @ vh).norm())
        assert cos > 0.98  # the direction of the exact polar factor U Vᵀ


def test_adamw_half_equals_torch_adamw() -> None:
    model = tiny_dit()
    ref = copy.deepcopy(model)
    cfg = OptimConfig(name="muon", lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    opt = build_optimizer(model, cfg)
    _, rest = split_muon_params(ref, ["blocks"])
    torch_adamw = torch.optim.AdamW(decay_groups([p for _, p in rest], 0.05), lr=1e-3, betas=(0.9, 0.95))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for seed in range(3):
        for m in (model, ref):
            set_grads(m, seed)
        opt.step()
        torch_adamw.step()
    ours, theirs = dict(model.named_parameters()), dict(ref.named_parameters())
    for n, _ in rest:
        assert torch.equal(ours[n], theirs[n]), n
    for n, p in ours.items():
        if n.startswith("blocks.") and p.ndim == 2:
            assert not torch.equal(p, start[n]) and not torch.equal(p, theirs[n]), n  # Muon moved it


def test_lr_set_on_param_groups_reaches_both_optimizers() -> None:
    model = tiny_dit()
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-3, weight_decay=0.1))
    assert len(opt.param_groups) == 3  # Muon's, AdamW decay, AdamW no-decay
    for group in opt.param_groups:
        group["lr"] = 0.0
    before = [p.detach().clone() for p in model.parameters()]
    set_grads(model, 0)
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())


def test_state_dict_round_trip_gives_bit_identical_steps() -> None:
    model = tiny_dit()
    cfg = OptimConfig(name="muon", lr=1e-3, weight_decay=0.01)
    opt = build_optimizer(model, cfg)
    for seed in range(2):
        set_grads(model, seed)
        opt.step()
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert len(saved_opt["state"]) == len(list(model.parameters()))
    assert sorted(i for g in saved_opt["param_groups"] for i in g["params"]) == list(
        range(len(saved_opt["state"]))
    )
    resumed = tiny_dit()
    resumed.load_state_dict(saved_model)
    opt2 = build_optimizer(resumed, cfg)
    opt2.load_state_dict(saved_opt)
    for m, o in ((model, opt), (resumed, opt2)):
        for seed in (5, 6):
            set_grads(m, seed)
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))
    with pytest.raises(ValueError, match="param groups"):
        opt2.load_state_dict({"state": {}, "param_groups": saved_opt["param_groups"][:1]})
