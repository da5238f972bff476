"""Camera/subject motion of a clip from dense optical flow on a few low-resolution frame pairs.

Score unit: **frame diagonals per second**. For sampled pairs of frames ``(i, i + g)`` (``g``
frames apart, about ``1 / pair_fps`` seconds), dense optical flow (OpenCV DIS or Farneback) is
computed at a fixed working size (shorter side ``flow_short_side`` pixels); each pixel's
flow magnitude is divided by the working frame's diagonal and by the pair's time gap
``g / fps``. Dividing by the diagonal removes the resolution; dividing by the time gap removes
the frame rate. ``score`` is the mean over pixels and pairs; a camera panning by one frame
width per second on a 16:9 frame scores about 0.87.

``moving_fraction`` is the share of pixels moving faster than ``moving_speed`` (same unit)
whose brightness also changed between the two frames; the static filter uses it, because the
mean is both too small for a locked-off camera watching people walk and inflated by flow noise
on flat, grainy regions of a truly static shot (near where the image changed, after smoothing
away noise; see ``_changed``).

``jitter`` measures camera shake in **frame diagonals per second squared**: how hard the scene's
common motion keeps changing speed or direction. Every ``G`` frames (about ``1 / jitter_fps`` s)
three frames ``(i, i + G, i + 2G)`` give two flows; every pixel of frame ``i`` is followed into
frame ``i + G``, where its next displacement is read; the change between the two, over the
``G / fps`` seconds of a step and the frame diagonal, is that point's acceleration. Its median
over pixels (a vector) is the common acceleration of that instant, and ``jitter`` is the median
over instants of its length (instants where fewer than a quarter of the pixels stay in the frame
are skipped). Why each step:

* following the points, not comparing the median flow of two pairs a quarter of a second apart
  (the first definition): those are different scene points, so a large subject entering the
  frame, or a car passing close to the lens, moved the median as much as a shaking camera did
  (bikes.mp4's scenes of cars passing the lens scored like a hand-held camera); a subject at a
  steady speed now changes nothing, and the median over pixels keeps only what most of the
  frame shares;
* steps of about 0.1 s rather than one frame: a hand's sway (1-2 Hz) changes the speed little
  within one frame, and the flow's noise, divided by the step twice, would drown it; dividing by
  the step (acceleration, not change of speed) makes a steady acceleration measure the same
  whatever the frame rate rounds the step to;
* the median over instants ignores a bump (a cut the scene detector missed, a passing truck)
  and an operator easing a pan in or out, as long as the clip mostly moves steadily; a short
  clip that speeds up and slows down throughout is measured by that acceleration.

Translation only: a roll about the frame centre cancels in the median over pixels. A clip
shorter than two steps (about 0.2 s) gives 0.

See ``bench/motion_calibration.py`` and docs/curation.md (Motion thresholds) for the measured
scores of shaky, smooth and static clips behind ``max_jitter`` and ``max_motion``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from data_prep.types import MotionStatus


@dataclass
class MotionConfig:
    """Optical-flow motion scoring and the too_static / too_fast filter."""

    method: Literal["dis", "farneback"] = "dis"
    """optical flow: dis (OpenCV DIS, ultrafast preset) or farneback"""
    analysis_fps: float = 4.0
    """flow pairs sampled at about this rate (pairs per second of clip)"""
    pair_fps: float = 25.0
    """the two frames of a pair are about 1/pair_fps seconds apart (at least one frame)"""
    jitter_fps: float = 10.0
    """jitter follows points over steps of about 1/jitter_fps seconds"""
    flow_short_side: int = 64
    """flow is computed on frames resized to this shorter side (pixels)"""
    global_align: bool = True
    """remove the global shift (phase correlation) before dense flow, so whip pans are measured"""
    min_motion: float = 0.002
    """too_static below this score (frame diagonals per second)"""
    min_moving_fraction: float = 0.02
    """too_static when fewer than this share of pixels move (see moving_speed, moving_min_diff)"""
    moving_speed: float = 0.02
    """pixel speed (diagonals per second) above which a pixel counts as moving ..."""
    moving_min_diff: float = 4.0
    """... and whose brightness (Gaussian-smoothed, 0-255) changed by more than this between the pair"""
    max_motion: float = 0.8
    """too_fast above this score (frame diagonals per second; a whip pan)"""
    max_jitter: float = 0.44
    """too_fast when jitter exceeds this (frame diagonals per second squared; a shaky camera); 0 disables"""

    def validate(self) -> None:
        if self.analysis_fps <= 0 or self.pair_fps <= 0 or self.jitter_fps <= 0:
            raise ValueError("motion.analysis_fps, motion.pair_fps and motion.jitter_fps must be positive")
        if self.flow_short_side < 16:
            raise ValueError(f"motion.flow_short_side={self.flow_short_side}: must be at least 16")


@dataclass
class MotionResult:
    """Motion statistics of one clip (speeds in frame diagonals per second)."""

    score: float
    """mean flow magnitude"""
    moving_fraction: float
    """share of pixels faster than MotionConfig.moving_speed near a real brightness change"""
    p90: float
    """90th percentile of per-pixel speed"""
    jitter: float
    """median over instants of the scene's common acceleration (frame diagonals per second squared)"""
    num_pairs: int
    """frame pairs the flow was computed on"""


def _flow(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    """(h, w, 2) float32 flow from grey ``a`` to grey ``b``."""
    if method == "dis":
        # NOTE: a fresh DIS object per pair: a reused one keeps state sized by earlier
        # frames, which made scores depend on what the process had scored before.
        return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST).calc(a, b, None)
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 3, 5, 1.1, 0)
    raise ValueError(f"motion.method={method!r}: choose dis or farneback")


def _aligned_flow(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    """Flow from ``a`` to ``b`` (h, w, 2): global shift by phase correlation, then dense residual.

    Dense flow on a small frame only recovers displacements of a few pixels; a whip pan at
    10-15 fps moves the content by a quarter of the frame between frames. Phase correlation
    finds such a global shift; flow then only has to explain what is left.
    """
    h, w = a.shape
    window = _hann(h, w)
    (dx, dy), response = cv2.phaseCorrelate(a.astype(np.float32), b.astype(np.float32), window)
    if response < 0.05 or np.hypot(dx, dy) < 1.0:
        return _flow(a, b, method)
    shift = np.array([[1, 0, dx], [0, 1, dy]], np.float32)  # b_aligned(x) = b(x + shift)
    b_aligned = cv2.warpAffine(
        b, shift, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )
    flow = _flow(a, b_aligned, method)  # (h, w, 2) residual
    flow[..., 0] += dx
    flow[..., 1] += dy
    return flow


@functools.lru_cache(maxsize=8)
def _hann(h: int, w: int) -> np.ndarray:
    return cv2.createHanningWindow((w, h), cv2.CV_32F)


def _grey_small(frame: np.ndarray, short_side: int) -> np.ndarray:
    h, w = frame.shape[:2]
    s = short_side / min(h, w)
    size = (max(8, round(w * s)), max(8, round(h * s)))
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(grey, size, interpolation=interp)


def _changed(a: np.ndarray, b: np.ndarray, min_diff: float) -> np.ndarray:
    """(h, w) bool: near where the smoothed brightness changed by more than ``min_diff``.

    Smoothing before differencing averages sensor noise away; dilating by ~6 % of the short
    side covers the flat inside of a moving object, whose pixels change only at its edges.
    """
    sa = cv2.GaussianBlur(a.astype(np.float32), (0, 0), 1.5)
    sb = cv2.GaussianBlur(b.astype(np.float32), (0, 0), 1.5)
    changed = (np.abs(sb - sa) > min_diff).astype(np.uint8)
    k = max(3, round(min(a.shape) * 0.06) | 1)
    return cv2.dilate(changed, np.ones((k, k), np.uint8)).astype(bool)


def sample_pairs(num_frames: int, *, fps: float, cfg: MotionConfig) -> list[tuple[int, int]]:
    """Frame pairs ``(i, i + gap)`` spread over the clip at about ``cfg.analysis_fps``."""
    gap = max(1, round(fps / cfg.pair_fps))
    if num_frames <= gap:
        return []
    starts_avail = num_frames - gap
    n = max(1, min(starts_avail, round(num_frames / fps * cfg.analysis_fps)))
    starts = np.linspace(0, starts_avail - 1, n).round().astype(int)
    return [(int(i), int(i) + gap) for i in np.unique(starts)]


def sample_triples(num_frames: int, *, fps: float, cfg: MotionConfig) -> list[tuple[int, int, int]]:
    """Frame triples ``(i, i + gap, i + 2 gap)`` for ``i = 0, gap, 2 gap, ...``.

    ``gap`` frames last about ``1 / jitter_fps`` seconds. Consecutive triples share a flow: the
    clip costs one flow per gap (``jitter_fps`` a second).
    """
    gap = max(1, round(fps / cfg.jitter_fps))
    return [(i, i + gap, i + 2 * gap) for i in range(0, num_frames - 2 * gap, gap)]


def _velocity_change(f1: np.ndarray, f2: np.ndarray) -> np.ndarray | None:
    """(2,) median over pixels of how a point's flow changes from ``f1`` (a->b) to ``f2`` (b->c).

    Each pixel ``x`` of ``a`` lands at ``x + f1(x)`` in ``b``; its next displacement is ``f2``
    read there. Pixels that leave the frame are skipped; None when fewer than a quarter remain.
    """
    h, w = f1.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)  # (h, w) each
    map_x, map_y = xx + f1[..., 0], yy + f1[..., 1]  # (h, w) where each pixel of a lands in b
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)  # (h, w)
    if inside.sum() < 0.25 * h * w:
        return None
    f2_along = cv2.remap(f2, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # (h, w, 2)
    return np.median((f2_along - f1)[inside], axis=0)  # (N, 2) -> (2,)


def motion_score(frames: np.ndarray, *, fps: float, cfg: MotionConfig | None = None) -> MotionResult:
    """Motion statistics of one clip's (T, h, w, 3) uint8 RGB frames shown at ``fps``."""
    cfg = cfg or MotionConfig()
    pairs = sample_pairs(len(frames), fps=fps, cfg=cfg)
    if not pairs:
        return MotionResult(score=0.0, moving_fraction=0.0, p90=0.0, jitter=0.0, num_pairs=0)
    cache: dict[int, np.ndarray] = {}

    def grey(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = _grey_small(frames[i], cfg.flow_short_side)
        return cache[i]

    flows: dict[tuple[int, int], np.ndarray] = {}

    def flow(i: int, j: int) -> np.ndarray:
        if (i, j) not in flows:
            a, b = grey(i), grey(j)
            flows[i, j] = _aligned_flow(a, b, cfg.method) if cfg.global_align else _flow(a, b, cfg.method)
        return flows[i, j]  # (h, w, 2) pixels

    speeds, moving = [], []
    for i, j in pairs:
        a, b = grey(i), grey(j)
        diag = float(np.hypot(*a.shape))
        per_sec = flow(i, j) * (fps / (j - i) / diag)  # (h, w, 2) diagonals per second
        speed = np.hypot(per_sec[..., 0], per_sec[..., 1])  # (h, w)
        # NOTE: flow on flat, noisy regions is random; a pixel only counts as moving where the
        # image really changed, which separates sensor noise from small moving subjects.
        speeds.append(speed.ravel())
        moving.append(((speed > cfg.moving_speed) & _changed(a, b, cfg.moving_min_diff)).ravel())
    mag = np.concatenate(speeds)
    accels = []  # per instant: length of the common acceleration, diagonals per second squared
    for i, j, k in sample_triples(len(frames), fps=fps, cfg=cfg):
        change = _velocity_change(flow(i, j), flow(j, k))  # (2,) pixels per step, or None
        if change is not None:
            step = (j - i) / fps  # seconds
            accels.append(float(np.hypot(*change)) / (float(np.hypot(*grey(i).shape)) * step * step))
    return MotionResult(
        score=float(mag.mean()),
        moving_fraction=float(np.concatenate(moving).mean()),
        p90=float(np.percentile(mag, 90)),
        jitter=float(np.median(accels)) if accels else 0.0,
        num_pairs=len(pairs),
    )


def classify_motion(result: MotionResult, cfg: MotionConfig | None = None) -> MotionStatus | None:
    """``"too_static"``, ``"too_fast"`` or None (keep)."""
    cfg = cfg or MotionConfig()
    if result.score > cfg.max_motion:
        return "too_fast"
    if cfg.max_jitter > 0 and result.jitter > cfg.max_jitter:
        return "too_fast"
    if result.score < cfg.min_motion or result.moving_fraction < cfg.min_moving_fraction:
        return "too_static"
    return None
