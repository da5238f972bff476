"""Motion score: unit independent of resolution and frame rate; static / fast classification."""

from __future__ import annotations

import math

import pytest

from data_prep import synthetic as S
from data_prep.motion import MotionConfig, classify_motion, motion_score, sample_pairs


@pytest.mark.parametrize("aspect", [(96, 128), (72, 128)])
def test_pan_score_matches_the_rendered_speed(aspect):
    h, w = aspect
    speed = 0.25  # frame widths per second
    expected = speed * w / math.hypot(w, h)  # frame diagonals per second
    r = motion_score(S.pan(speed=speed, height=h, width=w, fps=24.0), fps=24.0)
    assert r.score == pytest.approx(expected, rel=0.1)


def test_same_motion_at_two_resolutions_and_two_frame_rates_scores_the_same():
    # Tolerance: 5 % of the reference score.
    scores = {
        (h, w, fps): motion_score(
            S.pan(speed=0.25, height=h, width=w, fps=fps, num_frames=int(2 * fps)), fps=fps
        ).score
        for h, w, fps in [(96, 128, 24.0), (192, 256, 24.0), (96, 128, 48.0), (192, 256, 12.0)]
    }
    ref = scores[(96, 128, 24.0)]
    for key, s in scores.items():
        assert s == pytest.approx(ref, rel=0.05), (key, scores)


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_static_shot_is_too_static(method):
    cfg = MotionConfig(method=method)
    r = motion_score(S.static_shot(noise=3.0), fps=24.0, cfg=cfg)
    assert classify_motion(r, cfg) == "too_static"


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_whip_pan_is_too_fast(method):
    cfg = MotionConfig(method=method)
    assert classify_motion(motion_score(S.whip_pan(), fps=24.0, cfg=cfg), cfg) == "too_fast"


@pytest.mark.parametrize("speed", [0.05, 0.1, 0.25, 0.5])
@pytest.mark.parametrize("direction", ["left", "up"])
def test_ordinary_pans_are_kept(speed, direction):
    r = motion_score(S.pan(speed=speed, direction=direction), fps=24.0)
    assert classify_motion(r) is None, r


def test_small_moving_subject_on_static_camera_is_kept():
    r = motion_score(S.moving_shapes("red", "circle", "right", size=0.25), fps=24.0)
    assert r.moving_fraction > MotionConfig().min_moving_fraction
    assert classify_motion(r) is None, r


def test_vtest_people_walking_before_static_camera_is_kept(vtest_video):
    r = motion_score(vtest_video.frames[:200], fps=vtest_video.meta.fps)
    # NOTE: the mean is far below even a slow pan's (people cover a few % of the frame) but
    # enough pixels really move, so the clip is kept.
    assert r.score < motion_score(S.pan(speed=0.05), fps=24.0).score / 3
    assert r.moving_fraction > MotionConfig().min_moving_fraction
    assert classify_motion(r) is None, r


def test_pairs_are_one_pair_gap_apart_at_about_analysis_fps():
    cfg = MotionConfig(analysis_fps=4.0, pair_fps=25.0)
    pairs = sample_pairs(100, fps=50.0, cfg=cfg)  # 2 s of 50 fps: gap 2, about 8 pairs
    assert all(j - i == 2 for i, j in pairs) and len(pairs) == 8
    assert sample_pairs(1, fps=25.0, cfg=cfg) == []


def test_too_short_clip_scores_zero():
    r = motion_score(S.pan(num_frames=1), fps=24.0)
    assert r.num_pairs == 0 and r.score == 0.0


def test_dis_and_farneback_agree_on_a_pan():
    # Two independent flow methods as each other's reference: within 15 %.
    frames = S.pan(speed=0.3, num_frames=36)
    dis = motion_score(frames, fps=24.0, cfg=MotionConfig(method="dis")).score
    fb = motion_score(frames, fps=24.0, cfg=MotionConfig(method="farneback")).score
    assert fb == pytest.approx(dis, rel=0.15)


def test_shaky_camera_has_high_jitter_and_can_be_filtered():
    smooth = motion_score(S.pan(speed=0.2), fps=24.0)
    shaky = motion_score(S.camera_move(speed=0.2, shake=0.01), fps=24.0)
    assert smooth.jitter < 0.02 < 0.1 < shaky.jitter
    cfg = MotionConfig(max_jitter=0.1)
    assert classify_motion(shaky, cfg) == "too_fast"
    assert classify_motion(smooth, cfg) is None


@pytest.mark.parametrize("fps", [10.0, 60.0])
def test_whip_pan_measured_at_low_and_high_frame_rates(fps):
    # 3 frame widths per second: at 10 fps the content jumps a quarter of the frame per frame.
    frames = S.camera_move(speed=3.0, num_frames=int(1.5 * fps), fps=fps)
    r = motion_score(frames, fps=fps)
    assert r.score == pytest.approx(3.0 * 128 / math.hypot(128, 96), rel=0.1)
    assert classify_motion(r) == "too_fast"


def test_score_does_not_depend_on_what_was_scored_before(bikes_video):
    clip = bikes_video.frames[30:76]
    first = motion_score(clip, fps=25.0)
    motion_score(S.pan(height=72, width=96), fps=24.0)  # another frame size in between
    assert motion_score(clip, fps=25.0) == first
