"""Per-video analysis as one streaming pass: decode -> scene cuts -> clip spans -> clip scores.

Frames flow one at a time from :class:`data_prep.decode.AnalysisStream` into
:class:`data_prep.scenes.SceneStream` (cuts, a window at a time) and :class:`SpanFrames`,
which holds only the frames a clip may still need. :class:`ClipPlanner` turns cuts into clip
spans as soon as they are certain: a scene's clips when its closing cut is confirmed, and with
``clips.chunking=fixed`` each full-length chunk of a long scene as soon as the scene is known
to reach past it. Each clip's frames are handed to a scoring function (quality, motion,
fingerprint) the moment they are complete, then released.

Peak memory is therefore the scene-detection window plus one or two clips' frames, whatever
the video's length. One case cannot know its spans early: ``clips.chunking=even`` splits a
long scene into equal parts, so its span depends on where the scene ends. Its frames are held
up to ``decode.max_memory_mb``; beyond that they are released and the scene's clips are
scored in a second decoding pass over those spans alone. The results equal a whole-video
analysis (tests/data_prep/test_analysis.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.clips import ClipConfig, ClipSpan, frame_limits, make_clips
from data_prep.decode import AnalysisStream, DecodeConfig
from data_prep.scenes import SceneConfig, SceneStream
from vdiff.io.video import VideoMeta

Span = tuple[int, int]
ScoreFn = Callable[[np.ndarray, VideoMeta], dict[str, Any]]
"""Scores one clip's (T, h, w, 3) uint8 RGB analysis frames of a source with the given meta."""


class ClipPlanner:
    """:func:`data_prep.clips.make_clips` for a video whose cuts arrive in order."""

    def __init__(self, *, fps: float, cfg: ClipConfig):
        self.fps, self.cfg = fps, cfg
        self.max_f = frame_limits(fps=fps, cfg=cfg)[1]
        self.scene_start = 0
        self._next_chunk: int | None = None  # start of the open scene's next early chunk

    def _first_frame(self) -> int:
        s = self.scene_start
        return s + (self.cfg.trim_frames if s > 0 else 0)

    def earliest_needed(self) -> int:
        """No clip decided later starts before this frame."""
        return self._first_frame() if self._next_chunk is None else self._next_chunk

    def close_scene(self, end: int, *, last: bool = False) -> tuple[list[ClipSpan], list[ClipSpan]]:
        """(clips, too-short spans) of the open scene, which ends at ``end`` (a cut, or the video's end)."""
        if end <= self.scene_start:
            return [], []
        num_frames = end if last else end + 1  # NOTE: not the last frame -> trimmed like a cut
        out = make_clips([(self.scene_start, end)], fps=self.fps, num_frames=num_frames, cfg=self.cfg)
        self.scene_start, self._next_chunk = end, None
        return out

    def early_chunks(self, frontier: int) -> list[Span]:
        """Chunks of the open scene that are clips wherever it ends (no cut before ``frontier``)."""
        if self.cfg.chunking != "fixed":
            return []
        x = self.earliest_needed()
        # NOTE: the scene ends at a cut >= frontier (or the video's end), so its trimmed end
        # is at least frontier - trim_frames and every full chunk before that is final.
        limit = frontier - self.cfg.trim_frames
        out = []
        while x + self.max_f <= limit:
            out.append((x, x + self.max_f))
            x += self.max_f
        if out:
            self._next_chunk = x
        return out


class SpanFrames:
    """The analysis frames of clip spans being collected; scores each span once complete."""

    def __init__(self, score: ScoreFn, *, source: VideoMeta, max_frames: int):
        self.score, self.source, self.max_frames = score, source, max_frames
        self.frames: dict[int, np.ndarray] = {}
        self.pending: list[Span] = []
        self.stats: dict[Span, dict[str, Any]] = {}
        self.deferred: list[Span] = []
        """spans whose frames were released under the memory cap (scored in a second pass)"""
        self.lost_before = 0
        self.seen = 0

    def add(self, span: Span) -> None:
        if span not in self.stats and span not in self.pending and span not in self.deferred:
            self.pending.append(span)

    def push(self, index: int, frame: np.ndarray, keep_from: int) -> None:
        if index >= keep_from:
            self.frames[index] = frame
        self.seen = index + 1

    def resolve(self, keep_from: int) -> None:
        """Score complete spans, release frames no span needs, enforce the memory cap."""
        for span in [s for s in self.pending if s[1] <= self.seen]:
            self.pending.remove(span)
            if span[0] < self.lost_before:
                self.deferred.append(span)
                continue
            frames = np.stack([self.frames[i] for i in range(*span)])  # (T, h, w, 3)
            self.stats[span] = self.score(frames, self.source)
        low = min([keep_from, *(s[0] for s in self.pending)])
        for i in [i for i in self.frames if i < low]:
            del self.frames[i]
        if len(self.frames) > self.max_frames:
            # NOTE: only a long scene under chunking=even gets here; its clips move to pass 2.
            cut = sorted(self.frames)[len(self.frames) - self.max_frames]
            for i in [i for i in self.frames if i < cut]:
                del self.frames[i]
            self.lost_before = max(self.lost_before, cut)


@dataclass
class VideoAnalysis:
    """What one streaming pass found in a video."""

    meta: VideoMeta
    """display size, fps and the number of frames decoded"""
    truncated: bool
    """decoding stopped at a damaged packet"""
    clips: list[ClipSpan]
    """candidate clips, in order"""
    too_short: list[ClipSpan]
    """scene remainders too short to be clips"""
    stats: dict[Span, dict[str, Any]]
    """the scoring function's result for every candidate clip's (start, end)"""
    cuts: list[int]
    """scene cuts (first frame of each new scene)"""
    seconds: dict[str, float] = field(default_factory=dict)
    """decode and scenes wall time"""
    second_pass: int = 0
    """clips scored in a second decoding pass (chunking=even on a scene over the memory cap)"""


def analyze_video(
    path: str | Path, *, decode: DecodeConfig, scenes: SceneConfig, clips: ClipConfig, score: ScoreFn
) -> VideoAnalysis:
    """Decode ``path`` once, find its scenes and clips, and ``score`` every candidate clip."""
    with AnalysisStream(path, decode) as stream:
        fps = stream.info.fps
        detector = SceneStream(fps=fps, cfg=scenes, window_frames=decode.window_frames)
        planner = ClipPlanner(fps=fps, cfg=clips)
        cap = max(1, decode.max_memory_mb * 2**20 // stream.frame_bytes)
        held = SpanFrames(score, source=stream.meta, max_frames=cap)
        found: tuple[list[ClipSpan], list[ClipSpan]] = ([], [])
        cuts: list[int] = []
        t_scenes = 0.0

        def plan(new_cuts: list[int], *, end: int | None = None) -> None:
            for c in new_cuts:
                _collect(found, held, planner.close_scene(c))
            if end is not None:
                _collect(found, held, planner.close_scene(end, last=True))
            for span in planner.early_chunks(detector.frontier):
                held.add(span)

        for i, frame in enumerate(stream):
            held.push(i, frame, planner.earliest_needed())
            t0 = time.perf_counter()
            new = detector.push(frame)
            t_scenes += time.perf_counter() - t0
            cuts += new
            plan(new)
            held.resolve(planner.earliest_needed())
        t0 = time.perf_counter()
        new = detector.finish()
        t_scenes += time.perf_counter() - t0
        cuts += new
        plan(new, end=stream.count)
        held.resolve(planner.earliest_needed())
        meta, truncated, decode_s = stream.meta, stream.truncated, stream.seconds
    if held.deferred:
        held.stats.update(_second_pass(path, decode, sorted(held.deferred), score, meta))
    clip_spans, short = found
    return VideoAnalysis(
        meta=meta,
        truncated=truncated,
        clips=sorted(clip_spans, key=lambda s: s.start_frame),
        too_short=sorted(short, key=lambda s: s.start_frame),
        stats=held.stats,
        cuts=cuts,
        seconds={"decode": decode_s, "scenes": t_scenes},
        second_pass=len(held.deferred),
    )


def _collect(
    found: tuple[list[ClipSpan], list[ClipSpan]], held: SpanFrames, new: tuple[list[ClipSpan], list[ClipSpan]]
) -> None:
    found[0].extend(new[0])
    found[1].extend(new[1])
    for span in new[0]:
        held.add((span.start_frame, span.end_frame))


def _second_pass(
    path: str | Path, decode: DecodeConfig, spans: list[Span], score: ScoreFn, meta: VideoMeta
) -> dict[Span, dict[str, Any]]:
    """Score ``spans`` (sorted, not overlapping) from a fresh decode, one span's frames at a time."""
    stats: dict[Span, dict[str, Any]] = {}
    todo = list(spans)
    buf: list[np.ndarray] = []
    with AnalysisStream(path, decode) as stream:
        for i, frame in enumerate(stream):
            if not todo:
                break
            start, end = todo[0]
            if start <= i < end:
                buf.append(frame)
            if i == end - 1:
                stats[todo.pop(0)] = score(np.stack(buf), meta)  # (T, h, w, 3)
                buf = []
    return stats
