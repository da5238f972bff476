"""Optimizers (AdamW, Muon + AdamW, Shampoo) and a warmup + cosine learning-rate schedule.

``build_optimizer(model, cfg)`` returns one ``torch.optim.Optimizer`` for ``cfg.name``:

- ``adamw``: torch AdamW, decoupled weight decay on >= 2-D weights only;
- ``muon``: torch.optim.Muon on the 2-D weights of the transformer blocks and AdamW on the
  rest, as one object (:class:`~vdiff.optim.muon.MuonWithAdamW`);
- ``shampoo``: blocked Shampoo grafted to AdamW or Adagrad (:class:`~vdiff.optim.shampoo.Shampoo`).

:mod:`vdiff.optim.memory` counts each one's state from parameter shapes alone (a meta-device model).

The schedule is a pure function of the step (nanoGPT style): the training loop sets the lr of
every param group before each step, so resuming needs no scheduler state. All three keep their
state in ``Optimizer.state``/``state_dict`` form, which vdiff.checkpoint saves with
torch.distributed.checkpoint. Muon and Shampoo need whole weight matrices: on one device and
under DDP they have them; under FSDP2/HSDP each matrix is gathered from its DTensor shards for
the step and every rank keeps its own shard of the update (:mod:`vdiff.optim.gather`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from vdiff.optim.muon import MuonWithAdamW, split_muon_params
from vdiff.optim.shampoo import Shampoo, check_shampoo_args

__all__ = [
    "MuonConfig",
    "MuonWithAdamW",
    "OptimConfig",
    "Shampoo",
    "ShampooConfig",
    "build_optimizer",
    "decay_groups",
    "learning_rate",
    "lr_factor",
    "param_groups",
]


@dataclass
class MuonConfig:
    """Muon (torch.optim.Muon) on the blocks' 2-D weights; AdamW (optim.lr, betas, eps) on the rest."""

    momentum: float = 0.95
    """Muon momentum μ (buffer ← μ·buffer + (1 − μ)·g)"""
    nesterov: bool = True
    """orthogonalise the Nesterov look-ahead g + μ·(buffer − g) instead of the buffer"""
    ns_steps: int = 5
    """Newton–Schulz iterations that orthogonalise the momentum"""
    adjust_lr: Literal["match_rms_adamw", "original"] = "match_rms_adamw"
    """Muon lr scale of an A x B matrix: match_rms_adamw 0.2·sqrt(max(A, B)) (AdamW's lr fits);
    original sqrt(max(1, A/B)) (Keller Jordan's, for a Muon lr near 0.02)"""
    modules: list[str] = field(default_factory=lambda: ["blocks"])
    """module names whose 2-D weights Muon updates (the DiT's transformer blocks); the rest use AdamW"""

    def validate(self) -> None:
        if not 0 <= self.momentum < 1 or not 1 <= self.ns_steps < 100 or not self.modules:
            raise ValueError(
                f"optim.muon: need 0 <= momentum < 1, 1 <= ns_steps < 100 and at least one module name; "
                f"got momentum={self.momentum}, ns_steps={self.ns_steps}, modules={self.modules}"
            )


@dataclass
class ShampooConfig:
    """Blocked Shampoo (vdiff.optim.shampoo) whose step takes a first-order optimizer's norm per block."""

    max_preconditioner_dim: int = 1024
    """split each weight (size-1 dims dropped, then first dim x the rest) into blocks of at most this
    size per dimension"""
    precondition_frequency: int = 20
    """recompute the inverse 4th roots of the factors (eigendecomposition) every this many steps"""
    start_preconditioning_step: int = 20
    """first step (1-based) that uses the Shampoo direction; before it, the grafted optimizer's step"""
    graft: Literal["adamw", "adagrad"] = "adamw"
    """first-order optimizer whose per-block step norm Shampoo takes (optim.eps; adamw: optim.betas[1])"""
    epsilon: float = 1e-12
    """added to the factor matrices' eigenvalues before the inverse root"""
    factor_beta: float = 1.0
    """1 sums G·Gᵀ over all steps (Adagrad-style); < 1 keeps L ← β·L + (1 − β)·G·Gᵀ"""


@dataclass
class OptimConfig:
    """The optimizer and its learning-rate schedule."""

    name: Literal["adamw", "muon", "shampoo"] = "adamw"
    """adamw; muon (Muon on the blocks' 2-D weights, AdamW on the rest); shampoo (grafted, blocked)"""
    lr: float = 1e-4
    """peak learning rate (after warmup)"""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2) (muon: of its AdamW half; Muon uses optim.muon.momentum). shampoo: beta1 is
    the EMA of the raw gradient, the first moment M that both L^(-1/4)·M·R^(-1/4) and the graft step
    use (0: M is the gradient); beta2 the adamw graft's second-moment decay (unused by adagrad)"""
    eps: float = 1e-8
    """AdamW epsilon (also the Shampoo graft's)"""
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
    muon: MuonConfig = field(default_factory=MuonConfig)
    shampoo: ShampooConfig = field(default_factory=ShampooConfig)

    def validate(self) -> None:
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(
                f"optim: need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1; got lr={self.lr}, "
                f"warmup_steps={self.warmup_steps}, min_lr_ratio={self.min_lr_ratio}"
            )
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay={self.weight_decay}: must be >= 0")
        if not all(0 <= b < 1 for b in self.betas) or self.eps <= 0:
            raise ValueError(
                f"optim: need 0 <= betas < 1 and eps > 0; got betas={self.betas}, eps={self.eps}"
            )
        self.muon.validate()
        check_shampoo_args(**shampoo_kwargs(self))


def shampoo_kwargs(cfg: OptimConfig) -> dict[str, Any]:
    """:class:`Shampoo`'s keyword arguments (all but ``lr`` and ``weight_decay``) from ``cfg``."""
    return {"betas": tuple(cfg.betas), "eps": cfg.eps, **dataclasses.asdict(cfg.shampoo)}


def decay_groups(params: Iterable[torch.Tensor], weight_decay: float) -> list[dict]:
    """Two groups: >= 2-D weights decay, everything else (biases, norms, scales) does not."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The two AdamW groups of :func:`decay_groups` over ``model``'s trainable parameters."""
    return decay_groups(model.parameters(), weight_decay)


def _fused(params: list[torch.Tensor]) -> bool | None:
    """``fused=True`` for AdamW when every parameter is on CUDA, else the default."""
    return (bool(params) and all(p.is_cuda for p in params) and torch.cuda.is_available()) or None


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The ``cfg.name`` optimizer over ``model``'s trainable parameters (see the module docstring)."""
    cfg.validate()
    adamw_kwargs = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
    if cfg.name == "adamw":
        groups = param_groups(model, cfg.weight_decay)
        return torch.optim.AdamW(groups, **adamw_kwargs, fused=_fused(list(model.parameters())))
    if cfg.name == "muon":
        hidden, rest = split_muon_params(model, cfg.muon.modules)
        rest_params = [p for _, p in rest]
        muon_kwargs = {
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "momentum": cfg.muon.momentum,
            "nesterov": cfg.muon.nesterov,
            "ns_steps": cfg.muon.ns_steps,
            "adjust_lr_fn": cfg.muon.adjust_lr,
        }
        return MuonWithAdamW(
            hidden,
            decay_groups(rest_params, cfg.weight_decay),
            muon_kwargs=muon_kwargs,
            adamw_kwargs={**adamw_kwargs, "fused": _fused(rest_params)},
        )
    if cfg.name == "shampoo":
        groups = [g for g in param_groups(model, cfg.weight_decay) if g["params"]]
        return Shampoo(groups, lr=cfg.lr, **shampoo_kwargs(cfg))
    raise ValueError(f"optim.name={cfg.name!r}: must be one of adamw, muon, shampoo")


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
