"""AdamW with decoupled weight decay on matrices only, and a warmup + cosine learning-rate schedule.

The schedule is a pure function of the step (nanoGPT style): the training loop sets the lr of
every param group before each step, so resuming needs no scheduler state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 1e-4
    """peak learning rate (after warmup)"""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)"""
    eps: float = 1e-8
    """AdamW epsilon"""
    weight_decay: float = 0.0
    """decoupled weight decay on weight matrices (never on biases, norms, or 1-D parameters)"""
    warmup_steps: int = 0
    """linear warmup from 0 to lr over this many steps"""
    schedule: Literal["constant", "cosine"] = "constant"
    """after warmup: constant, or cosine decay to lr * min_lr_ratio at train.steps"""
    min_lr_ratio: float = 0.1
    """cosine schedule: final lr as a fraction of lr"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (<= 0 disables clipping)"""

    def validate(self) -> None:
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(
                f"optim: need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1; got lr={self.lr}, "
                f"warmup_steps={self.warmup_steps}, min_lr_ratio={self.min_lr_ratio}"
            )


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: >= 2-D weights decay, everything else (biases, norms, scales) does not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters (fused on CUDA where available)."""
    fused = all(p.is_cuda for p in model.parameters()) and torch.cuda.is_available()
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None
    )


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at ``step`` (0-based): linear warmup, then constant or cosine."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def learning_rate(step: int, cfg: OptimConfig, *, total_steps: int) -> float:
    """The lr at ``step``: ``cfg.lr`` times :func:`lr_factor` (set it on every param group)."""
    return cfg.lr * lr_factor(
        step,
        warmup_steps=cfg.warmup_steps,
        total_steps=total_steps,
        schedule=cfg.schedule,
        min_lr_ratio=cfg.min_lr_ratio,
    )
