"""Scenes -> clips: trimming at cuts, too-short spans, chunking, frame accuracy."""

from __future__ import annotations

import pytest

from data_prep.clips import ClipConfig, ClipSpan, frame_limits, make_clips


def _frames(spans):
    return sorted(f for s in spans for f in range(s.start_frame, s.end_frame))


def test_trims_only_at_cuts_and_drops_short():
    scenes = [(0, 30), (30, 76), (76, 80), (80, 120)]
    clips, short = make_clips(
        scenes, fps=25.0, num_frames=120, cfg=ClipConfig(min_seconds=1.0, trim_frames=2)
    )
    assert clips == [ClipSpan(0, 30, 0, 28), ClipSpan(30, 76, 32, 74), ClipSpan(80, 120, 82, 120)]
    assert short == [ClipSpan(76, 80, 78, 78)]


def test_min_length_is_inclusive():
    # 25 frames at 25 fps is exactly 1 s: kept; 24 frames is not.
    cfg = ClipConfig(min_seconds=1.0, trim_frames=0)
    assert len(make_clips([(0, 25)], fps=25.0, num_frames=25, cfg=cfg)[0]) == 1
    assert len(make_clips([(0, 24)], fps=25.0, num_frames=24, cfg=cfg)[1]) == 1


def test_fixed_chunking_keeps_long_remainder_and_reports_short_one():
    cfg = ClipConfig(min_seconds=1.0, max_seconds=4.0, trim_frames=0)
    clips, short = make_clips([(0, 230)], fps=25.0, num_frames=230, cfg=cfg)  # 100 + 100 + 30
    assert [(c.start_frame, c.end_frame) for c in clips] == [(0, 100), (100, 200), (200, 230)]
    clips, short = make_clips([(0, 210)], fps=25.0, num_frames=210, cfg=cfg)  # 100 + 100 + 10
    assert [(c.start_frame, c.end_frame) for c in clips] == [(0, 100), (100, 200)]
    assert [(s.start_frame, s.end_frame) for s in short] == [(200, 210)]
    assert _frames(clips + short) == list(range(210))


def test_even_chunking_splits_equally_within_max():
    cfg = ClipConfig(min_seconds=1.0, max_seconds=4.0, trim_frames=0, chunking="even")
    clips, short = make_clips([(0, 210)], fps=25.0, num_frames=210, cfg=cfg)
    assert [c.num_frames for c in clips] == [70, 70, 70]
    assert short == [] and _frames(clips) == list(range(210))


@pytest.mark.parametrize("fps", [23.976, 24.0, 29.97, 60.0])
def test_every_clip_within_limits_at_any_fps(fps):
    cfg = ClipConfig(min_seconds=1.5, max_seconds=3.0, trim_frames=1)
    scenes = [(0, 17), (17, 200), (200, 260), (260, 1000)]
    clips, short = make_clips(scenes, fps=fps, num_frames=1000, cfg=cfg)
    lo, hi = frame_limits(fps=fps, cfg=cfg)
    assert all(lo <= c.num_frames <= hi for c in clips)
    assert all(s.num_frames < lo for s in short)
    for c in clips + short:
        assert c.scene_start <= c.start_frame <= c.end_frame <= c.scene_end


def test_scene_outside_video_is_an_error():
    with pytest.raises(ValueError, match="outside the video"):
        make_clips([(0, 50)], fps=25.0, num_frames=40)
