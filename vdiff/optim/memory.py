"""Optimizer state size, computed from parameter shapes alone (no state is allocated).

``state_bytes(model, cfg)`` counts, in bytes, the tensors that :func:`vdiff.optim.build_optimizer`
would keep in ``Optimizer.state`` once every trainable parameter has taken a step, so it works on
a model built on the meta device (``build_model("wan2.1-1.3b", device="meta")``). The count is
that of the whole (unsharded) model: under FSDP2 the elementwise state is divided across ranks;
Shampoo's factors are not (see :mod:`vdiff.optim.shampoo`).

``python -m vdiff.optim.memory [MODEL ...]`` prints the table that docs/training.md quotes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Iterable

import torch

from vdiff.optim import OptimConfig
from vdiff.optim.muon import split_muon_params
from vdiff.optim.shampoo import param_blocks

STEP_BYTES = 4
"""``state["step"]``: a 0-D float32 tensor per parameter (torch AdamW, Shampoo; not torch Muon)"""


def _nbytes(p: torch.Tensor, copies: int = 1) -> int:
    return copies * p.numel() * p.element_size()


def adamw_state_bytes(params: Iterable[torch.Tensor]) -> int:
    """torch AdamW (amsgrad off): ``step``, ``exp_avg``, ``exp_avg_sq`` per parameter."""
    return sum(STEP_BYTES + _nbytes(p, 2) for p in params)


def muon_state_bytes(params: Iterable[torch.Tensor]) -> int:
    """torch Muon: one ``momentum_buffer`` like each parameter."""
    return sum(_nbytes(p) for p in params)


def shampoo_state_bytes(
    params: Iterable[torch.Tensor], *, max_preconditioner_dim: int, first_moment: bool
) -> int:
    """:class:`~vdiff.optim.shampoo.Shampoo`: ``step``, ``graft_sq``, ``exp_avg`` (when
    ``betas[0] > 0``) and, per block (r, c), ``L``, ``L_root`` (r, r) and ``R``, ``R_root`` (c, c)."""
    total = 0
    for p in params:
        blocks = param_blocks(p.shape, max_preconditioner_dim)
        factors = sum((rs.stop - rs.start) ** 2 + (cs.stop - cs.start) ** 2 for rs, cs in blocks)
        total += STEP_BYTES + _nbytes(p, 2 if first_moment else 1) + 2 * factors * p.element_size()
    return total


def trainable(model: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters the optimizer updates."""
    return [p for p in model.parameters() if p.requires_grad]


def state_bytes(model: torch.nn.Module, cfg: OptimConfig) -> int:
    """Bytes of optimizer state ``build_optimizer(model, cfg)`` holds after a step of every parameter."""
    cfg.validate()
    if cfg.name == "adamw":
        return adamw_state_bytes(trainable(model))
    if cfg.name == "muon":
        hidden, rest = split_muon_params(model, cfg.muon.modules)
        return muon_state_bytes(hidden) + adamw_state_bytes(p for _, p in rest)
    if cfg.name == "shampoo":
        return shampoo_state_bytes(
            trainable(model),
            max_preconditioner_dim=cfg.shampoo.max_preconditioner_dim,
            first_moment=cfg.betas[0] > 0,
        )
    raise ValueError(f"optim.name={cfg.name!r}: must be one of adamw, muon, shampoo")


def state_table(model: torch.nn.Module, cfgs: dict[str, OptimConfig]) -> list[tuple[str, int, float]]:
    """``(label, total bytes, bytes per trainable parameter)`` for each named config."""
    n = sum(p.numel() for p in trainable(model))
    return [(label, (b := state_bytes(model, cfg)), b / n) for label, cfg in cfgs.items()]


def default_configs() -> dict[str, OptimConfig]:
    """The three optimizers at their defaults, and Shampoo without a first moment."""
    shampoo = OptimConfig(name="shampoo")
    return {
        "adamw": OptimConfig(name="adamw"),
        "muon (+ AdamW on the rest)": OptimConfig(name="muon"),
        "shampoo (max_preconditioner_dim 1024)": shampoo,
        "shampoo, betas[0] = 0": dataclasses.replace(shampoo, betas=(0.0, 0.999)),
    }


def main(argv: list[str] | None = None) -> None:
    """Print each optimizer's state for each named model (built on the meta device, fp32 weights)."""
    # NOTE: imported here: vdiff.optim does not otherwise depend on vdiff.models.
    from vdiff.models import build_model

    ap = argparse.ArgumentParser(prog="python -m vdiff.optim.memory", description=main.__doc__)
    ap.add_argument("models", nargs="*", default=["wan2.1-1.3b"], help="model presets (default wan2.1-1.3b)")
    args = ap.parse_args(argv)
    for name in args.models:
        model = build_model(name, device="meta")
        n = sum(p.numel() for p in trainable(model))
        print(f"{name}: {n:,} trainable parameters ({math.ceil(n * 4 / 2**20):,} MiB in fp32)")
        print("| optimizer | state (GiB) | bytes / parameter |\n|---|---:|---:|")
        for label, total, per in state_table(model, default_configs()):
            print(f"| {label} | {total / 2**30:.2f} | {per:.2f} |")


if __name__ == "__main__":
    main()
