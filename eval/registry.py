"""Metric lookup: the registered metrics by name (the built-in ones are imported on first use).

The base classes and the ``register_metric`` decorator live in :mod:`eval.metric`; they are
re-exported here for callers that import them from the registry.
"""

from __future__ import annotations

from typing import Any

from eval.metric import (
    _REGISTRY,
    Metric,
    MetricFactory,
    MissingDependencyError,
    MissingWeightsError,
    UnscorableVideoError,
    VideoSample,
    register_metric,
    resolve_weight,
)

__all__ = [
    "Metric",
    "MetricFactory",
    "MissingDependencyError",
    "MissingWeightsError",
    "UnscorableVideoError",
    "VideoSample",
    "available_metrics",
    "build_metric",
    "register_metric",
    "resolve_weight",
]


def _load_builtin_metrics() -> None:
    # NOTE: imported lazily so that ``import eval`` stays light; each module registers on import.
    import eval.metrics.features
    import eval.metrics.fvd
    import eval.metrics.imaging
    import eval.metrics.semantic  # registers after features: replaces its overall_consistency factory
    import eval.metrics.temporal  # noqa: F401


def available_metrics() -> dict[str, str]:
    """Registered metric names and their one-line descriptions."""
    _load_builtin_metrics()
    return {name: doc for name, (_, doc) in sorted(_REGISTRY.items())}


def build_metric(name: str, cfg: Any) -> Metric:
    """Build a registered metric from the eval config (loads its weights; raises if missing)."""
    _load_builtin_metrics()
    if name not in _REGISTRY:
        raise ValueError(f"unknown eval dimension {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name][0](cfg)
