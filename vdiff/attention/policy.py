"""Which attention backend each denoising step uses at sampling time.

Sparse and quantized attention cost the most accuracy where the sample is decided: the first
steps fix the layout and the last ones the fine detail. :class:`AttentionPolicy` uses the dense
backend for the first ``dense_first_steps`` and last ``dense_last_steps`` steps and the fast
backend in between; the sampling pipeline asks ``backend_for(step, num_steps)`` each step and
``options_for(backend, layer_index=..., head_offset=...)`` for each layer's keyword options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vdiff.attention.registry import get_backend

# NOTE: sdpa takes no options; the sparse backends take the layer index (per-layer thresholds)
# and the head offset (Ulysses gives each rank a slice of the heads).
_ROUTED = ("sparse", "sparse_sage")


@dataclass
class AttentionPolicy:
    """Dense attention at the ends of the sampling trajectory, a fast backend in between."""

    backend: str = "sparse_sage"
    """backend of the middle steps (sage, sparse, sparse_sage, sdpa)"""
    dense_backend: str = "sdpa"
    """backend of the first and last steps"""
    dense_first_steps: int = 2
    """number of first denoising steps that use dense_backend"""
    dense_last_steps: int = 1
    """number of last denoising steps that use dense_backend"""
    options: dict[str, Any] = field(default_factory=dict)
    """keyword options of `backend` (e.g. topk, cdf_threshold, thresholds_file, pv_threshold)"""

    def validate(self) -> None:
        """Raise if a backend is unknown or a step count is negative."""
        get_backend(self.backend)
        get_backend(self.dense_backend)
        if self.dense_first_steps < 0 or self.dense_last_steps < 0:
            raise ValueError(
                f"attention policy: dense_first_steps={self.dense_first_steps} and "
                f"dense_last_steps={self.dense_last_steps} must be >= 0"
            )

    def backend_for(self, step: int, num_steps: int) -> str:
        """Backend of denoising step ``step`` (0-based) out of ``num_steps``."""
        if not 0 <= step < num_steps:
            raise ValueError(f"attention policy: step {step} is outside 0..{num_steps - 1}")
        if step < self.dense_first_steps or step >= num_steps - self.dense_last_steps:
            return self.dense_backend
        return self.backend

    def options_for(self, backend: str, *, layer_index: int, head_offset: int = 0) -> dict[str, Any]:
        """Keyword options for ``attention(..., backend=backend, **options)`` in one layer."""
        if backend != self.backend:
            return {}
        opts = dict(self.options)
        if backend in _ROUTED:
            opts.update(layer_index=layer_index, head_offset=head_offset)
        return opts
