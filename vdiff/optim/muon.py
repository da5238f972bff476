"""Muon on the 2-D hidden weight matrices, AdamW on everything else, as one optimizer object.

``torch.optim.Muon`` only takes 2-D parameters and is meant for hidden layers; embeddings,
the output head, biases, norms and modulation tables go to AdamW (Keller Jordan's and
Moonshot's recipes). :class:`MuonWithAdamW` holds one ``torch.optim.Muon`` (as
:class:`GatheredMuon`, which also steps FSDP2 shards) and one ``torch.optim.AdamW``, and looks
like a single ``torch.optim.Optimizer`` to the training loop and to
torch.distributed.checkpoint: ``param_groups`` lists the Muon groups then the AdamW groups (the
same dicts, so setting ``group["lr"]`` reaches the inner optimizer), and ``state_dict`` numbers
the parameters in that order, as ``torch.optim.Optimizer`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.distributed.tensor import DTensor

# NOTE: torch.optim.Muon's own Newton–Schulz and lr scaling, so the sharded path below computes
# what torch.optim.Muon computes on a whole matrix.
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

from vdiff.optim.gather import shard_like, whole
from vdiff.optim.shampoo import evaluate_closure


def is_hidden_matrix(name: str, param: torch.Tensor, modules: Sequence[str]) -> bool:
    """True for a 2-D parameter whose dotted name passes through one of ``modules``.

    NOTE: matching a name *component* (``blocks`` in ``module.blocks.3.ffn.fc1.weight``) keeps the
    rule working through DDP (``module.``), torch.compile (``_orig_mod.``) and peft wrappers.
    """
    return param.ndim == 2 and any(part in modules for part in name.split(".")[:-1])


def split_muon_params(
    model: torch.nn.Module, modules: Sequence[str]
) -> tuple[list[torch.Tensor], list[tuple[str, torch.Tensor]]]:
    """``(hidden matrices for Muon, [(name, param)] for AdamW)`` over the trainable parameters."""
    muon, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            if is_hidden_matrix(name, p, modules):
                muon.append(p)
            else:
                rest.append((name, p))
    if not muon:
        raise ValueError(
            f"optim.name=muon: no trainable 2-D weight under the modules {list(modules)} "
            f"(optim.muon.modules); name the modules holding the hidden layers (e.g. blocks) or use adamw"
        )
    return muon, rest


class GatheredMuon(torch.optim.Muon):
    """``torch.optim.Muon`` that also takes FSDP2/HSDP DTensor shards.

    Plain parameters go through ``torch.optim.Muon.step`` untouched. With DTensor parameters the
    momentum stays sharded; the (Nesterov) momentum is gathered whole, orthogonalised by torch's
    Newton–Schulz on every rank, and each rank applies its own shard of the result.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        if not any(isinstance(p, DTensor) for g in self.param_groups for p in g["params"]):
            return super().step(closure)
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._gathered_update(p, group)
        return loss

    def _gathered_update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        grad, state = p.grad, self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        buf, momentum, lr = state["momentum_buffer"], group["momentum"], group["lr"]
        buf.lerp_(grad, 1 - momentum)  # sharded, elementwise
        update = grad.lerp(buf, momentum) if group["nesterov"] else buf
        ortho = _zeropower_via_newtonschulz(
            whole(update), group["ns_coefficients"], group["ns_steps"], group["eps"]
        )  # (A, B) on every rank
        p.mul_(1 - lr * group["weight_decay"])
        p.add_(shard_like(ortho, p), alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon (:class:`GatheredMuon`) over ``muon_params`` and ``torch.optim.AdamW`` over ``adamw_groups``.

    ``adamw_groups`` are AdamW param groups (dicts with ``params`` and optional per-group keys);
    empty groups are dropped. Keyword dicts go to the two constructors unchanged.
    """

    # NOTE: Optimizer.__init__ is not called: param_groups and state belong to the two inner
    # optimizers and are exposed as properties, so there is one copy of each.
    def __init__(
        self,
        muon_params: Iterable[torch.Tensor],
        adamw_groups: Iterable[dict[str, Any]],
        *,
        muon_kwargs: dict[str, Any],
        adamw_kwargs: dict[str, Any],
    ) -> None:
        self.muon = GatheredMuon(list(muon_params), **muon_kwargs)
        groups = [g for g in adamw_groups if len(g["params"]) > 0]
        self.adamw = torch.optim.AdamW(groups, **adamw_kwargs) if groups else None
        self.defaults = {"muon": self.muon.defaults, "adamw": self.adamw.defaults if self.adamw else {}}

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The inner optimizers, Muon first."""
        return [self.muon] if self.adamw is None else [self.muon, self.adamw]

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, dict[str, Any]]:  # type: ignore[override]
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = evaluate_closure(closure)
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """One state dict in ``torch.optim.Optimizer``'s format, parameters numbered across both."""
        state: dict[Any, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for opt in self.optimizers:
            sd = opt.state_dict()
            state.update({offset + k: v for k, v in sd["state"].items()})
            groups += [{**g, "params": [offset + i for i in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in opt.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; keys may be ids or names (torch.distributed.checkpoint)."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"optimizer state has {len(groups)} param groups but this Muon+AdamW optimizer has "
                f"{len(self.param_groups)}; was the checkpoint written with another optim.name or model?"
            )
        start = 0
        for opt in self.optimizers:
            mine = groups[start : start + len(opt.param_groups)]
            start += len(opt.param_groups)
            keys = {k for g in mine for k in g["params"]}
            opt.load_state_dict(
                {"state": {k: v for k, v in state_dict["state"].items() if k in keys}, "param_groups": mine}
            )

    # NOTE: torch.optim.Optimizer pickles defaults/state/param_groups; here those are views.
    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"MuonWithAdamW(\n{self.muon!r},\n{self.adamw!r})"
