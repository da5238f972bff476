"""Scenes -> candidate clips: trim frames at cuts, drop short spans, chunk long scenes.

Frame-accurate and end exclusive. ``trim_frames`` are removed on each side of every cut (not
at the very start or end of the video, which are not cuts), so no clip holds a transition
frame. A trimmed scene shorter than ``min_seconds`` is a too-short span. A scene longer than
``max_seconds`` is split:

- ``chunking="fixed"``: consecutive chunks of exactly ``max_seconds`` worth of frames; the
  remainder becomes its own clip when it lasts at least ``min_seconds``, otherwise it is
  returned as a too-short span (so every frame is accounted for);
- ``chunking="even"``: the fewest equal-length chunks (±1 frame) of at most ``max_seconds``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal


@dataclass
class ClipConfig:
    """How scenes become clips."""

    min_seconds: float = 1.0
    """shortest clip kept; shorter trimmed scenes are reported as too_short"""
    max_seconds: float = 10.0
    """longest clip; longer scenes are split into chunks"""
    trim_frames: int = 2
    """frames dropped on each side of every cut (transition frames, encoder smear)"""
    chunking: Literal["fixed", "even"] = "fixed"
    """fixed: chunks of exactly max_seconds, remainder kept if long enough; even: equal chunks"""

    def validate(self) -> None:
        if self.min_seconds <= 0 or self.max_seconds < self.min_seconds:
            raise ValueError(
                f"clips: need 0 < min_seconds <= max_seconds, got {self.min_seconds} and {self.max_seconds}"
            )
        if self.trim_frames < 0:
            raise ValueError(f"clips.trim_frames={self.trim_frames}: must be >= 0")


@dataclass(frozen=True)
class ClipSpan:
    """A clip's frames ``[start_frame, end_frame)`` inside the scene ``[scene_start, scene_end)``."""

    scene_start: int
    scene_end: int
    start_frame: int
    end_frame: int

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame


def frame_limits(*, fps: float, cfg: ClipConfig) -> tuple[int, int]:
    """(min_frames, max_frames) of a clip at ``fps``."""
    # NOTE: the epsilon keeps exact products (2.0 s x 25 fps = 50) from rounding the wrong way.
    min_frames = max(1, math.ceil(cfg.min_seconds * fps - 1e-6))
    max_frames = max(min_frames, math.floor(cfg.max_seconds * fps + 1e-6))
    return min_frames, max_frames


def make_clips(
    scenes: list[tuple[int, int]], *, fps: float, num_frames: int, cfg: ClipConfig | None = None
) -> tuple[list[ClipSpan], list[ClipSpan]]:
    """Return (candidate clips, too-short spans) for ``scenes`` of a ``num_frames`` video."""
    cfg = cfg or ClipConfig()
    if fps <= 0:
        raise ValueError(f"make_clips: fps must be positive, got {fps}")
    min_f, max_f = frame_limits(fps=fps, cfg=cfg)
    clips: list[ClipSpan] = []
    short: list[ClipSpan] = []
    for s, e in scenes:
        if not 0 <= s < e <= num_frames:
            raise ValueError(f"make_clips: scene ({s}, {e}) is outside the video's {num_frames} frames")
        a = s + (cfg.trim_frames if s > 0 else 0)
        b = e - (cfg.trim_frames if e < num_frames else 0)
        if b - a < min_f:
            short.append(ClipSpan(s, e, a, max(a, b)))
            continue
        for ca, cb in _chunks(a, b, min_f=min_f, max_f=max_f, mode=cfg.chunking):
            (clips if cb - ca >= min_f else short).append(ClipSpan(s, e, ca, cb))
    return clips, short


def _chunks(a: int, b: int, *, min_f: int, max_f: int, mode: str) -> list[tuple[int, int]]:
    n = b - a
    if n <= max_f:
        return [(a, b)]
    if mode == "even":
        k = math.ceil(n / max_f)
        edges = [a + (n * i) // k for i in range(k + 1)]
        return list(itertools.pairwise(edges))
    if mode != "fixed":
        raise ValueError(f"clips.chunking={mode!r}: choose fixed or even")
    out = [(x, x + max_f) for x in range(a, b - max_f + 1, max_f)]
    if out[-1][1] < b:
        out.append((out[-1][1], b))  # the remainder; make_clips sorts it by length
    return out
