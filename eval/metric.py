"""Metric base classes (FastVideo style): metrics register under a name and score one decoded video.

A per-video metric implements ``compute(video) -> dict`` (the dict holds ``video_results``
and any extra numbers its aggregate needs) and ``aggregate(entries) -> float``. A set-level
metric (FVD) implements ``accumulate(video)`` and ``finalize() -> float`` instead. Every
metric says which ``method`` produced its numbers and whether they are comparable with the
VBench leaderboard (``comparable``); a weight-free substitute is never comparable.

Metrics load their weights in ``__init__`` from local paths only; a missing file is a
:class:`MissingWeightsError` raised before any video is read. The metric modules
(:mod:`eval.metrics`) import this module and register themselves; :mod:`eval.registry` looks
them up (it imports the metric modules, never the other way round).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


class MissingWeightsError(FileNotFoundError):
    """A dimension's weight file is not configured or not on disk; the message says what to provide."""


class MissingDependencyError(ImportError):
    """A dimension needs an optional package; the message names what to install."""


class UnscorableVideoError(ValueError):
    """This video cannot be scored by this metric (too few frames, ...); the message says why."""


@dataclass
class VideoSample:
    """One decoded video, shared by every requested metric (decoded once)."""

    path: Path
    """the video file"""
    prompt: str
    """its text prompt (VBench suite, JSON map or file name)"""
    frames: np.ndarray
    """all frames, uint8 RGB, (T, H, W, 3)"""
    fps: float
    """frames per second the container reports"""


class Metric:
    """Base class: per-video metrics override ``compute``; set-level ones ``accumulate``/``finalize``."""

    name: ClassVar[str] = ""
    set_level: ClassVar[bool] = False
    method: str = "vbench"
    comparable: bool = True

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Inputs outside the scored videos that this metric could not use (e.g. FVD references)."""
        if "_skipped" not in self.__dict__:
            self._skipped: list[dict[str, str]] = []
        return self._skipped

    def compute(self, video: VideoSample) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} is a set-level metric; use accumulate/finalize")

    def aggregate(self, entries: list[dict[str, Any]]) -> float:
        """VBench's default: the mean of the per-video results."""
        return float(np.mean([float(e["video_results"]) for e in entries])) if entries else float("nan")

    def accumulate(self, video: VideoSample) -> None:
        raise NotImplementedError(f"{type(self).__name__} is a per-video metric; use compute")

    def finalize(self) -> float:
        raise NotImplementedError(f"{type(self).__name__} is a per-video metric; use aggregate")


MetricFactory = Callable[[Any], Metric]
_REGISTRY: dict[str, tuple[MetricFactory, str]] = {}


def register_metric(name: str, *, doc: str = "") -> Callable[[MetricFactory], MetricFactory]:
    """Decorator: register a metric class (built as ``cls(cfg)`` from an EvalConfig) under ``name``."""

    def deco(factory: MetricFactory) -> MetricFactory:
        _REGISTRY[name] = (factory, doc or (factory.__doc__ or "").strip().split("\n")[0])
        return factory

    return deco


_WEIGHTS_USED: ContextVar[dict[str, Path] | None] = ContextVar("vdiff_weights_used", default=None)


@contextlib.contextmanager
def record_weights() -> Iterator[dict[str, Path]]:
    """Collect ``{config key: path}`` of every weight :func:`resolve_weight` resolves in the block
    (the runner builds each metric inside one, for the weights manifest of ``eval_info.json``)."""
    used: dict[str, Path] = {}
    token = _WEIGHTS_USED.set(used)
    try:
        yield used
    finally:
        _WEIGHTS_USED.reset(token)


def resolve_weight(value: str, *, key: str, env: str, what: str, dimension: str) -> Path:
    """The weight path from config key ``key`` or environment variable ``env``; raise if absent."""
    raw = value or os.environ.get(env, "")
    if not raw:
        raise MissingWeightsError(
            f"dimension {dimension!r} needs {what}; set config key {key}=PATH or environment variable {env}"
        )
    path = Path(raw).expanduser()
    if not path.exists():
        raise MissingWeightsError(
            f"dimension {dimension!r}: {path} (from {key} / {env}) does not exist; it should be {what}"
        )
    used = _WEIGHTS_USED.get()
    if used is not None:
        used[key] = path
    return path
