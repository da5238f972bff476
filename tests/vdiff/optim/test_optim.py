"""AdamW groups and the warmup + cosine schedule against its closed form."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vdiff.optim import OptimConfig, build_optimizer, learning_rate, lr_factor, param_groups


def test_weight_decay_only_on_matrices() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Conv3d(2, 2, 1))
    decay, no_decay = param_groups(model, 0.1)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    opt = build_optimizer(model, OptimConfig(lr=3e-4, weight_decay=0.1))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0] and opt.param_groups[0]["lr"] == 3e-4


def test_warmup_then_cosine_closed_form() -> None:
    kw = dict(warmup_steps=10, total_steps=110, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_factor(s, **kw) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(110, **kw) == pytest.approx(0.1) and lr_factor(500, **kw) == pytest.approx(0.1)
    vals = [lr_factor(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(vals))
    assert lr_factor(1000, warmup_steps=0, total_steps=10, schedule="constant", min_lr_ratio=0.1) == 1.0
    cfg = OptimConfig(lr=2e-3, warmup_steps=4, schedule="cosine")
    assert learning_rate(1, cfg, total_steps=20) == pytest.approx(1e-3)
