"""Scene detection: real cuts found, flashes and fast pans not cut, scenes cover the video."""

from __future__ import annotations

import itertools

import pytest

from data_prep import synthetic as S
from data_prep.scenes import SceneConfig, cuts_to_scenes, detect_scenes, pyscenedetect_cuts

BIKES_CUTS = [30, 76, 137, 187, 242]
"""hard cuts of bikes.mp4, checked by eye frame by frame"""


def _cuts(scenes):
    return [s for s, _ in scenes[1:]]


def _assert_cuts_match(found, expected, tol=2):
    assert len(found) == len(expected), f"found cuts {found}, expected {expected}"
    for f, e in zip(found, expected):
        assert abs(f - e) <= tol, f"found cuts {found}, expected {expected} ±{tol}"


@pytest.mark.parametrize("detector", ["adaptive", "content"])
def test_bikes_cuts_found_and_nothing_else(bikes_video, detector):
    scenes = detect_scenes(bikes_video, SceneConfig(detector=detector))
    _assert_cuts_match(_cuts(scenes), BIKES_CUTS)
    assert scenes[0][0] == 0 and scenes[-1][1] == bikes_video.meta.num_frames
    assert all(a[1] == b[0] for a, b in itertools.pairwise(scenes))


@pytest.mark.slow
def test_bikes_cuts_transnetv2(bikes_video):
    scenes = detect_scenes(bikes_video, SceneConfig(detector="transnetv2"))
    _assert_cuts_match(_cuts(scenes), BIKES_CUTS)


def test_transnetv2_on_synthetic_cuts(make_video):
    frames, cuts = S.hard_cuts([S.pan(seed=i, num_frames=24, speed=0.2) for i in range(2)])
    scenes = detect_scenes(make_video(frames), SceneConfig(detector="transnetv2"))
    _assert_cuts_match(_cuts(scenes), cuts)


@pytest.mark.parametrize("detector", ["adaptive", "content"])
def test_synthetic_hard_cuts(make_video, detector):
    frames, cuts = S.hard_cuts([S.pan(seed=i, num_frames=30, speed=0.25) for i in range(3)])
    scenes = detect_scenes(make_video(frames), SceneConfig(detector=detector))
    _assert_cuts_match(_cuts(scenes), cuts, tol=0)


FLASH_BASES = {
    "static": lambda: S.static_shot(num_frames=60),
    "pan": lambda: S.pan(speed=0.2, num_frames=60),
    "fast_pan": lambda: S.pan(speed=1.0, num_frames=60),
    "moving_shape": lambda: S.moving_shapes(num_frames=60),
}


@pytest.mark.parametrize("detector", ["adaptive", "content"])
@pytest.mark.parametrize("base", sorted(FLASH_BASES))
@pytest.mark.parametrize(("length", "strength"), [(2, 0.8), (4, 0.5)])
def test_flash_is_not_a_cut(make_video, detector, base, length, strength):
    frames = S.flash(FLASH_BASES[base](), at=25, length=length, strength=strength)
    assert detect_scenes(make_video(frames), SceneConfig(detector=detector)) == [(0, 60)]


@pytest.mark.parametrize("base", ["static", "pan", "fast_pan"])
def test_stock_adaptive_detector_cuts_on_flash_so_suppression_matters(base):
    # NOTE: proves the flash test above exercises our suppression, not a lucky detector.
    frames = S.flash(FLASH_BASES[base](), at=25, length=4, strength=0.8)
    assert pyscenedetect_cuts(frames, fps=24.0, cfg=SceneConfig(detector="adaptive")) == [25]


@pytest.mark.parametrize("detector", ["adaptive", "content"])
@pytest.mark.parametrize("at", [20, 26, 31, 40])
def test_flash_near_a_real_cut_keeps_the_cut(make_video, detector, at):
    # NOTE: a flash 2-4 frames from a cut used to hide it (the detector's minimum scene
    # length and AdaptiveDetector's rolling window); flashes are mended before detection.
    frames, cuts = S.hard_cuts([S.pan(seed=i, num_frames=30, speed=0.6) for i in (1, 2)])
    frames = S.flash(frames, at=at, length=2, strength=0.8)
    scenes = detect_scenes(make_video(frames), SceneConfig(detector=detector))
    assert _cuts(scenes) == cuts


@pytest.mark.parametrize("speed", [0.5, 1.0, 2.0])
def test_no_cut_inside_fast_pan(make_video, speed):
    frames = S.pan(speed=speed, num_frames=60)
    assert detect_scenes(make_video(frames), SceneConfig()) == [(0, 60)]


def test_no_cut_inside_whip_pan(make_video):
    frames = S.whip_pan(num_frames=48)
    assert detect_scenes(make_video(frames), SceneConfig()) == [(0, 48)]


def test_cuts_to_scenes_covers_and_ignores_edges():
    assert cuts_to_scenes([0, 10, 10, 25, 30], 30) == [(0, 10), (10, 25), (25, 30)]
    assert cuts_to_scenes([], 7) == [(0, 7)]


@pytest.mark.parametrize("num_frames", [1, 2, 5])
def test_tiny_videos_are_one_scene(make_video, num_frames):
    video = make_video(S.pan(num_frames=num_frames))
    for detector in ("adaptive", "content"):
        assert detect_scenes(video, SceneConfig(detector=detector)) == [(0, num_frames)]
