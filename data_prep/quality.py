"""Cheap per-clip quality filters: too small, blurry, dark.

- ``too_small``: the *source* width or height is under ``min_width`` / ``min_height``.
- ``blurry``: sharpness is the variance of the Laplacian of the grey frame, computed on frames
  downscaled to a fixed shorter side (``blur_short_side``, never upscaled) so the number does not
  depend on the source or analysis resolution; the clip's sharpness is the median over sampled frames.
- ``dark``: the median frame's mean luma (BT.601, 0–255) is under ``dark_luma``, or more than
  ``max_black_fraction`` of the sampled frames are black (mean luma under ``black_luma``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from data_prep.types import QualityStatus
from vdiff.io.video import VideoMeta


@dataclass
class QualityConfig:
    """Quality filters of a clip."""

    min_width: int = 256
    """too_small when the source video is narrower than this (pixels)"""
    min_height: int = 144
    """too_small when the source video is shorter than this (pixels)"""
    blur_threshold: float = 25.0
    """blurry when the median Laplacian variance (at blur_short_side) is below this"""
    blur_short_side: int = 128
    """larger frames are downscaled to this shorter side before measuring sharpness"""
    dark_luma: float = 25.0
    """dark when the clip's median mean luma (0-255) is below this"""
    black_luma: float = 12.0
    """a frame whose mean luma is below this counts as black"""
    max_black_fraction: float = 0.5
    """dark when more than this share of the sampled frames are black"""
    sample_frames: int = 8
    """frames sampled evenly from the clip for the measurements"""

    def validate(self) -> None:
        if min(self.min_width, self.min_height, self.blur_threshold) < 0:
            raise ValueError("quality.min_width, quality.min_height and quality.blur_threshold must be >= 0")
        if self.blur_short_side < 1 or self.sample_frames < 1:
            raise ValueError(
                f"quality: need blur_short_side >= 1 and sample_frames >= 1; got "
                f"{self.blur_short_side} and {self.sample_frames}"
            )
        lumas_ok = 0 <= self.dark_luma <= 255 and 0 <= self.black_luma <= 255
        if not (lumas_ok and 0 <= self.max_black_fraction <= 1):
            raise ValueError(
                "quality: dark_luma and black_luma must be in [0, 255], max_black_fraction in [0, 1]"
            )


@dataclass
class QualityResult:
    """Measured quality numbers of a clip and the resulting status."""

    sharpness: float
    """median variance of the Laplacian at QualityConfig.blur_short_side"""
    luma: float
    """median of the sampled frames' mean luma (0-255)"""
    black_fraction: float
    """share of sampled frames that are black"""
    status: QualityStatus | None
    """too_small, blurry, dark, or None when the clip passes"""


def _sample(frames: np.ndarray, n: int) -> np.ndarray:
    idx = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int))
    return frames[idx]


def _grey_at(frame: np.ndarray, short_side: int) -> np.ndarray:
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    if min(h, w) <= short_side:
        # NOTE: never upscale: interpolation would invent blur; smaller frames are measured as is.
        return grey
    s = short_side / min(h, w)
    return cv2.resize(grey, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def measure_quality(
    frames: np.ndarray, *, meta: VideoMeta, cfg: QualityConfig | None = None
) -> QualityResult:
    """Sharpness, brightness and the status of a clip's (T, h, w, 3) uint8 RGB frames."""
    cfg = cfg or QualityConfig()
    if len(frames) == 0:
        raise ValueError("measure_quality: the clip has no frames")
    sample = _sample(frames, cfg.sample_frames)
    greys = [_grey_at(f, cfg.blur_short_side) for f in sample]
    sharp = float(np.median([cv2.Laplacian(g, cv2.CV_32F).var() for g in greys]))
    lumas = np.array([g.mean() for g in greys])
    luma = float(np.median(lumas))
    black = float((lumas < cfg.black_luma).mean())
    status: QualityStatus | None = None
    if meta.width < cfg.min_width or meta.height < cfg.min_height:
        status = "too_small"
    elif luma < cfg.dark_luma or black > cfg.max_black_fraction:
        # NOTE: darkness is judged before blur: a dark frame has little contrast, so its
        # Laplacian variance is low too and "blurry" would name the wrong cause.
        status = "dark"
    elif sharp < cfg.blur_threshold:
        status = "blurry"
    return QualityResult(sharpness=sharp, luma=luma, black_fraction=black, status=status)


def assess_quality(
    frames: np.ndarray, *, meta: VideoMeta, cfg: QualityConfig | None = None
) -> QualityStatus | None:
    """``"too_small"``, ``"blurry"``, ``"dark"`` or None (keep) for one clip."""
    return measure_quality(frames, meta=meta, cfg=cfg).status
