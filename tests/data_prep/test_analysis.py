"""Streaming analysis equals whole-video analysis, with memory bounded by the window, not the video."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from data_prep import synthetic as S
from data_prep.analysis import SpanFrames, analyze_video
from data_prep.clips import ClipConfig, make_clips
from data_prep.decode import DecodeConfig, DecodedVideo, decode_for_analysis
from data_prep.scenes import SceneConfig, SceneStream, context_frames, detect_scenes, raw_cuts
from vdiff.io.video import VideoMeta

FPS = 24.0


def _scene(n: int, seed: int, speed: float = 0.3) -> np.ndarray:
    return S.pan(num_frames=n, height=48, width=64, speed=speed, seed=seed)  # (n, 48, 64, 3)


def _long_frames() -> tuple[np.ndarray, list[int]]:
    """~10 windows of 64 frames; cuts on, just before and just after window edges; two flashes."""
    lengths = [64, 63, 2 + 64, 1 + 64 + 64, 40, 24, 150, 300]  # cuts at 64, 127, 193, 322, ...
    scenes = [_scene(n, seed=i) for i, n in enumerate(lengths)]
    frames, cuts = S.hard_cuts(scenes)
    frames = S.flash(frames, at=255, length=2)  # a flash next to a window edge (256)
    frames = S.flash(frames, at=500, length=3)
    return frames, cuts


def _stream_cuts(frames: np.ndarray, cfg: SceneConfig, window: int) -> list[int]:
    stream = SceneStream(fps=FPS, cfg=cfg, window_frames=window)
    cuts = [c for f in frames for c in stream.push(f)]
    return cuts + stream.finish()


@pytest.mark.parametrize(
    "cfg",
    [SceneConfig(), SceneConfig(flash_suppression=False), SceneConfig(detector="content")],
    ids=["adaptive+flash", "adaptive", "content"],
)
def test_scene_stream_finds_the_whole_video_cuts_at_every_window_edge(cfg):
    frames, truth = _long_frames()
    whole = [a for a, _ in detect_scenes(_as_video(frames), cfg)[1:]]
    if cfg.flash_suppression:
        assert whole == truth  # the reference itself is right on this video
    else:
        assert set(truth) <= set(whole)  # plus flash edges
    for window in (64, 100, 512):
        assert _stream_cuts(frames, cfg, window) == whole, window


@pytest.mark.slow
def test_scene_stream_matches_transnetv2_on_the_whole_video():
    frames, _ = _long_frames()
    frames = frames[:400]
    cfg = SceneConfig(detector="transnetv2")
    whole = [a for a, _ in detect_scenes(_as_video(frames), cfg)[1:]]
    assert len(whole) >= 3
    assert _stream_cuts(frames, cfg, 100) == whole


def test_raw_cuts_are_local_within_the_context():
    # Whether a frame is a cut depends only on frames within context_frames of it.
    frames, _ = _long_frames()
    cfg = SceneConfig()
    ctx = context_frames(cfg)
    whole = raw_cuts(frames, fps=FPS, cfg=cfg)
    for c in whole:
        lo = max(0, c - ctx)
        assert c in [lo + x for x in raw_cuts(frames[lo : c + ctx], fps=FPS, cfg=cfg)]


def _as_video(frames: np.ndarray) -> DecodedVideo:
    meta = VideoMeta(num_frames=len(frames), fps=FPS, width=frames.shape[2], height=frames.shape[1])
    return DecodedVideo(path=Path("synthetic.mp4"), meta=meta, frames=frames)


def _digest(frames: np.ndarray, meta) -> dict:
    """A score that identifies exactly which frames a clip received."""
    return {"n": len(frames), "sha": hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()}


def _reference(path, decode: DecodeConfig, scenes: SceneConfig, clips: ClipConfig):
    """Whole-video analysis: all frames in memory, then scenes, clips and scores."""
    video = decode_for_analysis(path, DecodeConfig(short_side=decode.short_side, max_memory_mb=4096))
    sc = detect_scenes(video, scenes)
    cand, short = make_clips(sc, fps=video.meta.fps, num_frames=video.meta.num_frames, cfg=clips)
    stats = {
        (c.start_frame, c.end_frame): _digest(video.frames[c.start_frame : c.end_frame], None) for c in cand
    }
    return cand, short, stats


@pytest.mark.parametrize(
    ("chunking", "max_memory_mb"),
    [("fixed", 1024), ("even", 1024), ("even", 1), ("fixed", 1)],
    ids=["fixed", "even", "even-second-pass", "fixed-tiny-cap"],
)
def test_streaming_analysis_equals_whole_video_analysis(tmp_path, chunking, max_memory_mb):
    frames, _ = _long_frames()
    path = S.write_video(tmp_path / "long.mp4", frames, FPS)
    decode = DecodeConfig(window_frames=64, max_memory_mb=max_memory_mb)
    scenes, clips = SceneConfig(), ClipConfig(min_seconds=0.5, max_seconds=2.0, chunking=chunking)
    got = analyze_video(path, decode=decode, scenes=scenes, clips=clips, score=_digest)
    cand, short, stats = _reference(path, decode, scenes, clips)
    assert got.meta.num_frames == len(frames) and not got.truncated
    assert got.clips == sorted(cand, key=lambda s: s.start_frame)
    assert got.too_short == sorted(short, key=lambda s: s.start_frame)
    assert got.stats == stats
    if max_memory_mb > 1:
        assert got.second_pass == 0


def test_held_frames_do_not_grow_with_the_video(tmp_path, monkeypatch):
    # One 40 s scene (10 chunks of 4 s) plus cuts: frames held stay under a bound set by the
    # window and one clip, not by the video's length.
    frames, _ = S.hard_cuts([_scene(960, seed=1, speed=0.1), _scene(200, seed=2)])
    path = S.write_video(tmp_path / "long.mp4", frames, FPS)
    peak = {"held": 0, "scene": 0}
    real_push = SpanFrames.push

    def push(self, index, frame, keep_from):
        real_push(self, index, frame, keep_from)
        peak["held"] = max(peak["held"], len(self.frames))

    real_window = SceneStream._run_window

    def run_window(self, end):
        peak["scene"] = max(peak["scene"], len(self._buf))
        return real_window(self, end)

    monkeypatch.setattr(SpanFrames, "push", push)
    monkeypatch.setattr(SceneStream, "_run_window", run_window)
    decode, scenes = DecodeConfig(window_frames=64), SceneConfig()
    clips = ClipConfig(max_seconds=4.0)
    got = analyze_video(path, decode=decode, scenes=scenes, clips=clips, score=_digest)
    assert len(got.clips) >= 10 and got.second_pass == 0
    window_and_context = 64 + 2 * context_frames(scenes)
    assert peak["scene"] <= window_and_context
    assert peak["held"] <= 4 * FPS + window_and_context + clips.trim_frames + 1
    assert peak["held"] < len(frames) / 4
