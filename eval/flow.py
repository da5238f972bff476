"""Weight-free optical flow (OpenCV DIS or Farneback) and flow-warped frame interpolation.

These are the labelled substitutes for VBench's RAFT (dynamic_degree, static filter) and
AMT (motion_smoothness); results computed with them are never leaderboard-comparable.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Literal

import cv2
import numpy as np

from eval.metric import UnscorableVideoError

FlowMethod = Literal["dis", "farneback"]
FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Dense flow between two (H, W, 3) uint8 RGB frames: (H', W', 2) float32 (H' >= H: RAFT's padded size)."""


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


class FlowCache:
    """Flows of one video, shared between the dimensions that need the same frame pairs.

    Keyed by the exact bytes of both frames and the method, so a hit returns what the same call
    would compute (dynamic_degree's pairs at ~8 fps are motion_smoothness's even-frame pairs at
    12-20 fps; at < 12 fps they are the static filter's consecutive pairs). Holds at most
    ``max_bytes`` of frames and flows; past that, flows are computed and not kept. Cached flows
    are read-only.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._frames: dict[tuple[tuple[int, ...], str, bytes], int] = {}
        self._flows: dict[tuple[int, int, str], np.ndarray] = {}

    def _frame_id(self, frame: np.ndarray) -> int | None:
        key = (frame.shape, frame.dtype.str, frame.tobytes())
        found = self._frames.get(key)
        if found is None and self.nbytes + frame.nbytes <= self.max_bytes:
            found = self._frames[key] = len(self._frames)
            self.nbytes += frame.nbytes
        return found

    def flow(self, a: np.ndarray, b: np.ndarray, method: str, compute: FlowFn | None = None) -> np.ndarray:
        """``compute(a, b)`` (default ``_optical_flow(a, b, method)``), computed once per frame pair
        and ``method`` while there is room; ``method`` names the flow (e.g. RAFT's weights)."""
        ia, ib = self._frame_id(a), self._frame_id(b)
        key = None if ia is None or ib is None else (ia, ib, method)
        if key is not None and key in self._flows:
            self.hits += 1
            return self._flows[key]
        self.misses += 1
        out = compute(a, b) if compute is not None else _optical_flow(a, b, method)
        if key is not None and self.nbytes + out.nbytes <= self.max_bytes:
            out.setflags(write=False)
            self._flows[key] = out
            self.nbytes += out.nbytes
        return out


_FLOW_CACHE: ContextVar[FlowCache | None] = ContextVar("vdiff_flow_cache", default=None)


@contextlib.contextmanager
def shared_flows(max_bytes: int) -> Iterator[FlowCache]:
    """Within the block, :func:`optical_flow` computes each (frame, frame, method) once.

    NOTE: the runner opens one block per video, so flows live only while that video is scored;
    ``max_bytes <= 0`` shares nothing.
    """
    cache = FlowCache(max_bytes)
    token = _FLOW_CACHE.set(cache if max_bytes > 0 else None)
    try:
        yield cache
    finally:
        _FLOW_CACHE.reset(token)


def optical_flow(a: np.ndarray, b: np.ndarray, method: FlowMethod = "dis") -> np.ndarray:
    """Dense flow from RGB frame ``a`` to ``b``: (H, W, 2) float32, so that ``a(x) ~ b(x + flow(x))``.

    Inside :func:`shared_flows` the result may be a cached, read-only array.
    """
    cache = _FLOW_CACHE.get()
    return cache.flow(a, b, method) if cache is not None else _optical_flow(a, b, method)


def cached(fn: FlowFn, key: str) -> FlowFn:
    """``fn`` computed through the :func:`shared_flows` cache of the calling video under ``key``,
    which must name the flow exactly (RAFT: its weights file), so that every dimension and the
    static filter share one computation per frame pair."""

    def run(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        cache = _FLOW_CACHE.get()
        return cache.flow(a, b, key, fn) if cache is not None else fn(a, b)

    return run


_DIS: dict[tuple[int, int], Any] = {}


def _dis() -> Any:
    """This process's and thread's DIS (medium preset) instance.

    NOTE: DIS keeps no state between ``calc`` calls without an initial flow, so one instance gives
    the flows a fresh one gives (tests/eval/test_temporal.py) and skips the per-call setup (about
    10 % of a 144x256 flow). Keyed by process too: a forked worker builds its own.
    """
    key = (os.getpid(), threading.get_ident())
    dis = _DIS.get(key)
    if dis is None:
        dis = _DIS[key] = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis


def _optical_flow(a: np.ndarray, b: np.ndarray, method: str = "dis") -> np.ndarray:
    if max(a.shape[:2]) < 12:
        raise UnscorableVideoError(f"frames of {a.shape[0]}x{a.shape[1]} px are too small for optical flow")
    ga, gb = _gray(a), _gray(b)
    if method == "dis":
        return _dis().calc(ga, gb, None)
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(ga, gb, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    raise ValueError(f"unknown flow method {method!r}; use 'dis' or 'farneback'")


def top_fraction_mean(flow: np.ndarray, fraction: float) -> float:
    """Mean of the largest ``fraction`` of flow magnitudes (VBench: 5% dynamic degree, 2% static filter)."""
    mag = np.sqrt(np.square(flow[..., 0]) + np.square(flow[..., 1])).ravel()
    # NOTE: VBench takes int(H*W*fraction) values; at least one keeps tiny frames defined.
    k = max(1, int(mag.size * fraction))
    return float(np.mean(np.partition(mag, mag.size - k)[-k:]))


@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) pixel coordinates, each (h, w) float32, read-only."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


def warp(frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warp: ``out(x) = frame(x + flow(x))`` with bilinear sampling, float32."""
    gx, gy = _pixel_grid(*flow.shape[:2])
    return cv2.remap(
        frame.astype(np.float32),
        gx + flow[..., 0],
        gy + flow[..., 1],
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def interpolate_middle(a: np.ndarray, b: np.ndarray, method: FlowMethod = "dis") -> np.ndarray:
    """The frame halfway between ``a`` and ``b`` (uint8), from bidirectional flow.

    NOTE: intermediate flows use the linear-motion approximation of Super SloMo (Jiang et al.,
    CVPR 2018) at t = 1/2: F_t0 = (F_10 - F_01) / 4, F_t1 = (F_01 - F_10) / 4; the two warped
    frames are averaged.
    """
    f01 = optical_flow(a, b, method)
    f10 = optical_flow(b, a, method)
    ft0 = 0.25 * (f10 - f01)
    ft1 = 0.25 * (f01 - f10)
    mid = 0.5 * warp(a, ft0) + 0.5 * warp(b, ft1)
    return np.clip(np.rint(mid), 0, 255).astype(np.uint8)
