"""The per-step attention policy: point a model's self-attentions at this step's backend, then back."""

from __future__ import annotations

import functools
from typing import Any

from vdiff.attention.policy import AttentionPolicy


def set_step_attention(model: Any, policy: AttentionPolicy, *, step: int, num_steps: int) -> None:
    """Point every self-attention's ``attn_op`` at ``policy``'s backend for ``step``.

    The model's own op (possibly a sequence-parallel wrapper) is kept and restored by
    :func:`restore_attention`; under sequence parallelism the backend runs inside the wrapper.
    """
    from vdiff.attention import attention as attention_fn

    backend = policy.backend_for(step, num_steps)
    for m in model.self_attentions():
        base = m.__dict__.setdefault("_base_attn_op", m.attn_op)
        # NOTE: under Ulysses the wrapper below tells the backend its heads (head_offset, num_heads).
        opts = policy.options_for(backend, layer_index=m.layer_index)
        op = functools.partial(attention_fn, backend=backend, **opts)
        if hasattr(base, "inner") and hasattr(base, "layout"):
            op = type(base)(inner=op, layout=base.layout, ring_backend=base.ring_backend)
        m.attn_op = op


def restore_attention(model: Any) -> None:
    """Undo :func:`set_step_attention`: every self-attention gets back the op it had."""
    for m in model.self_attentions():
        if "_base_attn_op" in m.__dict__:
            m.attn_op = m.__dict__.pop("_base_attn_op")


def policy_in_use(attention: AttentionPolicy | None) -> AttentionPolicy | None:
    """``attention`` when it switches backends between steps; None when every step is dense."""
    if attention is None or attention.backend == attention.dense_backend:
        return None
    return attention
