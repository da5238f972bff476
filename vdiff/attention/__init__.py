"""One attention function and a registry of backends (diffusers-style dispatch).

``attention(q, k, v, backend="sdpa", **options)`` takes (B, H, N, D) tensors and returns
(B, H, N, D), or ``(out, lse)`` with the log-sum-exp (B, H, N) in fp32 when
``return_lse=True`` (ring attention merges partial results with it). Backends register
themselves with the constraints they need (devices, dtypes, head dims, gradients, LSE);
a call that violates them is a clear error naming the backend and what it supports.

Where things live (each module imports only the ones listed before it; no cycles):

* :mod:`~vdiff.attention.registry`: :func:`attention`, :func:`register_backend`, the registry;
  :mod:`~vdiff.attention.config`: :class:`AttentionConfig` and the per-layer op;
  :mod:`~vdiff.attention.token_order`, :mod:`~vdiff.attention.metrics`;
* parts: :mod:`~vdiff.attention.checks` (input checks), :mod:`~vdiff.attention.cpu` (CPU
  features), :mod:`~vdiff.attention.quant` (INT8 quantisation, P·V precision),
  :mod:`~vdiff.attention.mask` (block-mask prediction), :mod:`~vdiff.attention.thresholds`
  (the per-layer thresholds file);
* execution paths over a block mask: :mod:`~vdiff.attention.fused` (torch SDPA),
  :mod:`~vdiff.attention.tiled` (explicit scores, INT8 ``_int_mm``),
  :mod:`~vdiff.attention.triton_kernels` (Triton), and :mod:`~vdiff.attention.execute`, which
  picks one (:func:`~vdiff.attention.execute.block_sparse_attention`);
* backends, compositions of the parts: :mod:`~vdiff.attention.dense` (``sdpa``),
  :mod:`~vdiff.attention.sage` (``sage``: quant + execute), :mod:`~vdiff.attention.sparse`
  (``sparse``, ``sparse_sage``: mask + quant + execute + thresholds);
* :mod:`~vdiff.attention.calibrate` (thresholds from mask + execute), :mod:`~vdiff.attention.policy`;
  :mod:`~vdiff.attention.record` (record a model's q, k, v while it samples).
"""

from __future__ import annotations

# NOTE: importing the backend modules registers the built-in backends.
from vdiff.attention import dense, sage, sparse
from vdiff.attention.config import AttentionConfig, attention_op, op_takes
from vdiff.attention.dense import sdpa
from vdiff.attention.registry import (
    AttentionFn,
    Backend,
    attention,
    available_backends,
    get_backend,
    register_backend,
)

__all__ = [
    "AttentionConfig",
    "AttentionFn",
    "Backend",
    "attention",
    "attention_op",
    "available_backends",
    "dense",
    "get_backend",
    "op_takes",
    "register_backend",
    "sage",
    "sdpa",
    "sparse",
]
