"""The model a training run trains: its starting weights and, for ``lora.rank > 0``, peft LoRA adapters.

    model = base_model(cfg)                   # init_from's weights, or the seeded init of model.*
    model = apply_lora(model, cfg.lora)       # adapters on cfg.lora.target_modules; the rest frozen
    check_lora_can_learn(model, cfg)

A run's trained model (LoRA folded in or not) is :func:`vdiff.runs.load_run_model`'s; ``vdiff train
--merge-lora`` is :func:`vdiff.runs.merge_run`.
"""

from __future__ import annotations

import torch

from vdiff.config import ConfigError
from vdiff.models import build_model, load_model
from vdiff.models.lora import add_lora, lora_layers
from vdiff.training.config import LoRAConfig, TrainConfig


def base_model(cfg: TrainConfig) -> torch.nn.Module:
    """The weights a run starts from: ``init_from``'s, or the seeded random init of ``model.*``.

    Seeds the global generator with ``cfg.seed`` first, so what drew from it before cannot shift
    the init (nor the LoRA adapters' init that follows it).
    """
    torch.manual_seed(cfg.seed)
    if not cfg.init_from:
        return build_model(cfg.model).train()
    # NOTE: float32 master weights whatever the file holds (bf16 releases too); autocast does bf16.
    model = load_model(cfg.init_from, dtype=torch.float32, attention=cfg.model.attention)
    wrong = cfg.model.mismatches(model.config, other="init_from")
    if wrong:
        raise ConfigError(
            f"init_from={cfg.init_from} is another architecture: {', '.join(wrong)}; set those keys"
        )
    return model.train()


def apply_lora(model: torch.nn.Module, cfg: LoRAConfig) -> torch.nn.Module:
    """Add peft LoRA adapters to ``cfg.target_modules`` in place; freeze everything else."""
    try:
        return add_lora(
            model, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, target_modules=cfg.target_modules
        )
    except ValueError as e:
        raise ConfigError(f"lora.target_modules={list(cfg.target_modules)}: {e}") from e


def check_lora_can_learn(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Refuse LoRA on the seeded init: its output head is zero and frozen, so no adapter gets a gradient."""
    if not cfg.init_from and not lora_layers(model.unembed):
        raise ConfigError(
            f"lora.rank={cfg.lora.rank} without init_from: the seeded init's output projection is zero and "
            "LoRA freezes it, so the adapters would get no gradient; set init_from=<a trained model folder> "
            "(or add unembed.proj to lora.target_modules)"
        )
