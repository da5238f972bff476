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
away noise; see ``_changed``). ``jitter`` is the mean change of the global (median) motion
vector between consecutive pairs, also in diagonals per second: high for a shaking camera.
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
    max_jitter: float = 0.0
    """too_fast when jitter exceeds this (shaky camera); 0 disables the check"""

    def validate(self) -> None:
        if self.analysis_fps <= 0 or self.pair_fps <= 0:
            raise ValueError("motion.analysis_fps and motion.pair_fps must be positive")
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
    """mean change of the global motion vector between consecutive pairs"""
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

    speeds, moving, globals_ = [], [], []
    for i, j in pairs:
        a, b = grey(i), grey(j)
        diag = float(np.hypot(*a.shape))
        flow = _aligned_flow(a, b, cfg.method) if cfg.global_align else _flow(a, b, cfg.method)  # (h, w, 2)
        per_sec = flow * (fps / (j - i) / diag)  # (h, w, 2) diagonals per second
        speed = np.hypot(per_sec[..., 0], per_sec[..., 1])  # (h, w)
        # NOTE: flow on flat, noisy regions is random; a pixel only counts as moving where the
        # image really changed, which separates sensor noise from small moving subjects.
        speeds.append(speed.ravel())
        moving.append(((speed > cfg.moving_speed) & _changed(a, b, cfg.moving_min_diff)).ravel())
        globals_.append(np.median(per_sec.reshape(-1, 2), axis=0))
    mag = np.concatenate(speeds)
    g = np.stack(globals_)  # (P, 2)
    jitter = float(np.linalg.norm(np.diff(g, axis=0), axis=1).mean()) if len(g) > 1 else 0.0
    return MotionResult(
        score=float(mag.mean()),
        moving_fraction=float(np.concatenate(moving).mean()),
        p90=float(np.percentile(mag, 90)),
        jitter=jitter,
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
