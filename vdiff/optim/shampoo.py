"""Shampoo with per-block Kronecker-factored preconditioners, grafted to a first-order step.

For a weight viewed as a matrix G (its first dim x the product of the others, once size-1 dims
are dropped, as Meta's Distributed Shampoo does) and split into blocks of at most
``max_preconditioner_dim`` per dimension, each block keeps

    L ← L + G·Gᵀ    (r, r)        R ← R + Gᵀ·G    (c, c)

(an exponential average when ``factor_beta`` < 1) and steps along ``L^(-1/4) · M · R^(-1/4)``,
M being the (bias-corrected) first moment of G (G itself when ``betas[0] = 0``). The inverse
roots come from an eigendecomposition every ``precondition_frequency`` steps, with
``epsilon`` added to the eigenvalues. **Grafting** (as in Meta's Distributed Shampoo): each
block's Shampoo direction is rescaled to the Frobenius norm of the step that a first-order
optimizer (``graft``: AdamW's ``M / (sqrt(v̂) + eps)`` or Adagrad's ``M / (sqrt(Σ G²) + eps)``)
would take on that block, so the learning rate and its schedule carry over from that
optimizer. Before ``start_preconditioning_step`` (and always for parameters with fewer than two
dims of size > 1: biases, norm scales) the update is the grafted optimizer's step itself. Weight decay is
decoupled (``θ ← θ − lr·wd·θ``).

Every piece of state is a tensor in ``Optimizer.state`` with a shape fixed at the first step
(``step``, ``exp_avg``, ``graft_sq``, and per block ``L_i``, ``R_i``, ``L_root_i``,
``R_root_i``), so ``state_dict``/``load_state_dict`` and torch.distributed.checkpoint save and
resume it exactly. The block layout depends on ``max_preconditioner_dim``, ``betas[0] > 0`` and
the parameter shapes: a checkpoint resumes only with the same ones (and, for a parameter whose
first dim has size 1, only if written since size-1 dims are dropped).

Under FSDP2/HSDP (DTensor parameters) the elementwise state stays sharded like the parameter;
the gradient, moment and graft step of a matrix are all-gathered (:mod:`vdiff.optim.gather`),
every rank computes the whole matrix's update, and keeps its shard. The factors and their roots
are plain tensors, the same on every rank: FSDP does not shard them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch

from vdiff.optim.gather import shard_like, whole

GRAFTS = ("adamw", "adagrad")


def evaluate_closure(closure: Callable[[], float] | None) -> float | None:
    """``closure()`` with gradients enabled (the ``Optimizer.step(closure)`` contract), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def matrix_shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, int] | None:
    """The (first dim, product of the rest) matrix view of a parameter, size-1 dims dropped first.

    None when fewer than two dims of size > 1 remain (0-D, 1-D, (1, n), ...): diagonal only.

    NOTE: size-1 dims are squeezed as in Meta's Distributed Shampoo (``merge_small_dims``): a
    (1, 6, 1536) modulation table is the (6, 1536) matrix, not (1, 9216), whose 1024-wide blocks
    would each carry a 1024 x 1024 right factor for 1024 parameters.
    """
    dims = [d for d in shape if d != 1]
    if len(dims) < 2:
        return None
    return dims[0], math.prod(dims[1:])


def block_slices(rows: int, cols: int, max_dim: int) -> list[tuple[slice, slice]]:
    """Row-major tiling of a (rows, cols) matrix into blocks of at most ``max_dim`` x ``max_dim``."""
    return [
        (slice(r, min(r + max_dim, rows)), slice(c, min(c + max_dim, cols)))
        for r in range(0, rows, max_dim)
        for c in range(0, cols, max_dim)
    ]


def param_blocks(shape: torch.Size | tuple[int, ...], max_dim: int) -> list[tuple[slice, slice]]:
    """The preconditioner blocks of a parameter's matrix view; [] when it has none (diagonal only)."""
    matrix = matrix_shape(shape)
    return [] if matrix is None else block_slices(*matrix, max_dim)


def inverse_root(matrix: torch.Tensor, *, root: int, eps: float) -> torch.Tensor:
    """``(A + eps·I)^(-1/root)`` of a symmetric positive semi-definite (n, n) matrix, via eigh.

    Eigenvalues are clamped at 0 first (round-off makes tiny ones negative).
    """
    a = matrix if matrix.dtype in (torch.float32, torch.float64) else matrix.float()
    try:
        eigvals, eigvecs = torch.linalg.eigh(a)  # (n,), (n, n)
    except torch.linalg.LinAlgError:
        # NOTE: float32 eigh can fail to converge on badly conditioned factors; float64 does not.
        eigvals, eigvecs = torch.linalg.eigh(a.double())
    scale = (eigvals.clamp(min=0) + eps).pow(-1.0 / root)  # (n,)
    return ((eigvecs * scale) @ eigvecs.T).to(matrix.dtype)  # Q·diag(λ^(-1/root))·Qᵀ


class Shampoo(torch.optim.Optimizer):
    """Blocked Shampoo grafted to AdamW or Adagrad; see the module docstring for the update."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_preconditioner_dim: int = 1024,
        precondition_frequency: int = 20,
        start_preconditioning_step: int = 20,
        graft: Literal["adamw", "adagrad"] = "adamw",
        epsilon: float = 1e-12,
        factor_beta: float = 1.0,
    ) -> None:
        check_shampoo_args(
            betas=betas,
            eps=eps,
            max_preconditioner_dim=max_preconditioner_dim,
            precondition_frequency=precondition_frequency,
            start_preconditioning_step=start_preconditioning_step,
            graft=graft,
            epsilon=epsilon,
            factor_beta=factor_beta,
        )
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "max_preconditioner_dim": max_preconditioner_dim,
            "precondition_frequency": precondition_frequency,
            "start_preconditioning_step": start_preconditioning_step,
            "graft": graft,
            "epsilon": epsilon,
            "factor_beta": factor_beta,
        }
        super().__init__(params, defaults)

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        # NOTE: the step count lives on the CPU (as torch AdamW's does): reading it needs no sync.
        state["step"] = torch.tensor(0.0)
        if group["betas"][0] > 0:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["graft_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        for i, (rs, cs) in enumerate(param_blocks(p.shape, group["max_preconditioner_dim"])):
            r, c = rs.stop - rs.start, cs.stop - cs.start
            for name, n in (("L", r), ("R", c)):
                # NOTE: plain tensors even for a DTensor parameter: the factors are of the whole
                # matrix, the same on every rank (DCP saves one copy and loads it on any mesh).
                state[f"{name}_{i}"] = torch.zeros(n, n, dtype=p.dtype, device=p.device)
                state[f"{name}_root_{i}"] = torch.zeros(n, n, dtype=p.dtype, device=p.device)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Shampoo does not support sparse gradients")
                if not self.state[p]:
                    self._init_state(p, group)
                self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state, grad = self.state[p], p.grad
        state["step"] += 1
        t = int(state["step"].item())
        beta1, beta2 = group["betas"]

        # 1. The first moment M (bias-corrected): what both Shampoo and the graft step along.
        if beta1 > 0:
            state["exp_avg"].lerp_(grad, 1 - beta1)
            moment = state["exp_avg"] / (1 - beta1**t)
        else:
            moment = grad

        # 2. The grafted first-order step, elementwise.
        sq = state["graft_sq"]
        if group["graft"] == "adamw":
            sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (sq.sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
        else:
            sq.addcmul_(grad, grad)
            denom = sq.sqrt().add_(group["eps"])
        graft_step = moment / denom

        # 3. Shampoo per block, at the graft step's norm; the graft step itself for 0-D/1-D.
        # A DTensor shard is gathered whole here and this rank's shard of the update kept.
        blocks = param_blocks(p.shape, group["max_preconditioner_dim"])
        update = graft_step
        if blocks:
            shape = matrix_shape(p.shape)
            full_grad = whole(grad)
            full_moment = full_grad if moment is grad else whole(moment)
            full_update = self._precondition(
                state,
                blocks=blocks,
                grad=full_grad.reshape(shape),
                moment=full_moment.reshape(shape),
                graft_step=whole(graft_step).reshape(shape),
                group=group,
                t=t,
            )  # (rows, cols)
            update = shard_like(full_update.view(p.shape), p)

        # 4. Decoupled weight decay, then the step.
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update, alpha=-group["lr"])

    def _precondition(
        self,
        state: dict[str, torch.Tensor],
        *,
        blocks: list[tuple[slice, slice]],
        grad: torch.Tensor,
        moment: torch.Tensor,
        graft_step: torch.Tensor,
        group: dict[str, Any],
        t: int,
    ) -> torch.Tensor:
        """The grafted Shampoo update of one (rows, cols) matrix, block by block."""
        start, freq, fb = (
            group["start_preconditioning_step"],
            group["precondition_frequency"],
            group["factor_beta"],
        )
        started = t >= start
        refresh = started and (t - start) % freq == 0
        new = 1.0 if fb == 1.0 else 1.0 - fb
        out = graft_step.clone()  # (rows, cols)
        for i, (rs, cs) in enumerate(blocks):
            g = grad[rs, cs]  # (r, c)
            left, right = state[f"L_{i}"], state[f"R_{i}"]
            left.mul_(fb).addmm_(g, g.T, alpha=new)  # (r, r)
            right.mul_(fb).addmm_(g.T, g, alpha=new)  # (c, c)
            if not started:
                continue
            if refresh:
                state[f"L_root_{i}"].copy_(inverse_root(left, root=4, eps=group["epsilon"]))
                state[f"R_root_{i}"].copy_(inverse_root(right, root=4, eps=group["epsilon"]))
            direction = state[f"L_root_{i}"] @ moment[rs, cs] @ state[f"R_root_{i}"]  # (r, c)
            norm = direction.norm()
            # NOTE: torch.where, not an `if`: no device sync; a zero direction stays zero.
            scale = torch.where(norm > 0, graft_step[rs, cs].norm() / norm, torch.zeros_like(norm))
            out[rs, cs] = direction * scale
        return out


def check_shampoo_args(
    *,
    betas: tuple[float, float],
    eps: float,
    max_preconditioner_dim: int,
    precondition_frequency: int,
    start_preconditioning_step: int,
    graft: str,
    epsilon: float,
    factor_beta: float,
) -> None:
    """Raise ``ValueError`` naming the first bad Shampoo setting and its valid range."""
    checks = [
        (len(betas) == 2 and all(0 <= b < 1 for b in betas), "optim.betas", betas, "two values in [0, 1)"),
        (eps > 0, "optim.eps", eps, "> 0"),
        (max_preconditioner_dim >= 1, "optim.shampoo.max_preconditioner_dim", max_preconditioner_dim, ">= 1"),
        (precondition_frequency >= 1, "optim.shampoo.precondition_frequency", precondition_frequency, ">= 1"),
        (
            start_preconditioning_step >= 1,
            "optim.shampoo.start_preconditioning_step",
            start_preconditioning_step,
            ">= 1 (the first step is 1)",
        ),
        (graft in GRAFTS, "optim.shampoo.graft", graft, f"one of {list(GRAFTS)}"),
        (epsilon > 0, "optim.shampoo.epsilon", epsilon, "> 0"),
        (0 < factor_beta <= 1, "optim.shampoo.factor_beta", factor_beta, "in (0, 1]"),
    ]
    for ok, key, value, want in checks:
        if not ok:
            raise ValueError(f"{key}={value!r}: must be {want}")
