"""Bootstrap confidence intervals of a dimension's aggregate over its videos."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

BOOTSTRAP_SEED = 0
"""Fixed, so the interval is a function of the per-video results alone (not of the run)."""


def bootstrap_ci(
    entries: list[dict[str, Any]],
    aggregate: Callable[[list[dict[str, Any]]], float],
    *,
    resamples: int,
    level: float = 0.95,
    seed: int = BOOTSTRAP_SEED,
) -> list[float] | None:
    """Percentile bootstrap interval ``[low, high]`` of ``aggregate(entries)``.

    Videos are resampled with replacement ``resamples`` times and each resample goes through the
    metric's own ``aggregate`` (a mean, a share of dynamic videos, VBench's pooled per-frame
    mean of the consistency dimensions, ...). None for fewer than 2 videos or ``resamples < 1``.
    Deterministic: the same entries in the same order give the same interval.
    """
    n = len(entries)
    if n < 2 or resamples < 1:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))  # (R, N)
    values = np.array([aggregate([entries[i] for i in row]) for row in idx], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [float(low), float(high)]
