"""TeaCache-style step caching: skip the transformer blocks while their input barely moves."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class StepCache:
    """Decides per step and branch whether the transformer blocks run or their residual is reused.

    TeaCache (Liu et al., 2024): the change of the timestep-modulated input of the first
    block between steps predicts the change of the model output. The relative L1 change
    ``|m_i − m_prev|₁ / |m_prev|₁`` is accumulated; while the sum stays below ``threshold``
    the blocks are skipped and ``tokens + cached residual`` is used, where the residual is
    (blocks output − blocks input) of the last computed step. The first and last steps are
    always computed. One state is kept per guidance branch (cond, uncond).
    """

    def __init__(self, *, threshold: float, num_steps: int, group: Any = None) -> None:
        self.threshold = threshold
        self.num_steps = num_steps
        self.group = group
        self.state: dict[str, dict[str, Any]] = {}
        self.computed = 0
        self.skipped = 0

    def should_compute(self, branch: str, step: int, modulated: torch.Tensor) -> bool:
        """Record ``modulated`` for ``branch`` at ``step``; True when the blocks must run."""
        st = self.state.setdefault(branch, {"prev": None, "acc": 0.0, "residual": None})
        prev, st["prev"] = st["prev"], modulated.detach()
        if step == 0 or step == self.num_steps - 1 or prev is None or st["residual"] is None:
            st["acc"] = 0.0
            return True
        sums = torch.stack([(modulated - prev).abs().sum(), prev.abs().sum()]).double()  # (2,)
        if self.group is not None:
            # NOTE: sequence-parallel ranks hold different tokens; they must agree to skip.
            dist.all_reduce(sums, group=self.group)
        rel = float(sums[0] / sums[1].clamp_min(1e-12))
        st["acc"] += rel
        if st["acc"] >= self.threshold:
            st["acc"] = 0.0
            return True
        return False

    def store(self, branch: str, residual: torch.Tensor) -> None:
        """Keep the blocks' residual (output − input tokens) of a computed step."""
        self.state[branch]["residual"] = residual.detach()
        self.computed += 1

    def reuse(self, branch: str) -> torch.Tensor:
        """The residual of the last computed step of ``branch``."""
        self.skipped += 1
        return self.state[branch]["residual"]


def local_valid_tokens(layout: Any, local_len: int) -> int:
    """How many of this rank's ``local_len`` sequence-parallel tokens are real (not padding)."""
    if layout is None:
        return local_len
    rank = dist.get_rank(layout.sp_group)
    return min(max(layout.valid_len - rank * local_len, 0), local_len)


def cached_forward(
    model: torch.nn.Module,
    x: torch.Tensor,
    timestep: torch.Tensor,
    context: torch.Tensor,
    *,
    cache: StepCache,
    branch: str,
    step: int,
    layout: Any = None,
) -> torch.Tensor:
    """``model(x, timestep, context)`` with TeaCache-style skipping of the blocks (see :class:`StepCache`).

    ``layout`` is the model's ``SequenceLayout`` under sequence parallelism (None otherwise).
    """
    from vdiff.models.layers import layer_norm_fp32

    e = model.embed(x, timestep, context)
    first = model.blocks[0]
    # NOTE: TeaCache's indicator is the first block's timestep-modulated input: it moves with
    # both the latents and the timestep embedding, and costs one LayerNorm.
    mod = first.modulation.float() + e.temb_mod.float()  # (B, 6, dim)
    modulated = layer_norm_fp32(e.tokens, first.norm1) * (1 + mod[:, 1:2]) + mod[:, 0:1]  # (B, N, dim)
    # NOTE: sequence-parallel padding tokens would add to the change; the decision must be the
    # one a single process takes on the real tokens.
    modulated = modulated[:, : local_valid_tokens(layout, modulated.shape[1])]  # (B, N_real, dim)
    if cache.should_compute(branch, step, modulated):
        tokens = e.tokens  # (B, N, dim)
        for block in model.blocks:
            tokens = block(tokens, context=e.context, temb_mod=e.temb_mod, rope=e.rope)
        cache.store(branch, tokens - e.tokens)
    else:
        tokens = e.tokens + cache.reuse(branch)  # (B, N, dim)
    return model.unembed(tokens, e.temb, e.grid, e.order)
