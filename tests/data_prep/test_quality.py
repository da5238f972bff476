"""Quality filters on synthetic sharp / blurred / dark clips and real footage."""

from __future__ import annotations

import pytest

from data_prep import synthetic as S
from data_prep.quality import QualityConfig, assess_quality, measure_quality
from vdiff.io.video import VideoMeta

META = VideoMeta(num_frames=48, fps=24.0, width=640, height=480)


def test_sharp_clip_passes():
    assert assess_quality(S.pan(), meta=META) is None


@pytest.mark.parametrize("size", [(96, 128), (288, 384)])
def test_blurred_clip_is_blurry(size):
    h, w = size
    sharp = S.pan(height=h, width=w, num_frames=12)
    assert assess_quality(sharp, meta=META) is None
    assert assess_quality(S.blurred(sharp, sigma=2.0 * h / 96), meta=META) == "blurry"


def test_dark_clip_is_dark_not_blurry():
    assert assess_quality(S.darkened(S.pan()), meta=META) == "dark"


def test_mostly_black_clip_is_dark():
    frames = S.pan(num_frames=20)
    frames[:14] = 0  # 70 % black frames, the rest bright
    r = measure_quality(frames, meta=META)
    assert r.black_fraction > 0.5 and r.status == "dark"


def test_small_source_is_too_small():
    small = VideoMeta(num_frames=48, fps=24.0, width=160, height=120)
    assert assess_quality(S.pan(), meta=small) == "too_small"
    assert assess_quality(S.pan(), meta=small, cfg=QualityConfig(min_width=128, min_height=96)) is None


def test_real_footage_passes(bikes_video):
    scenes = [(0, 30), (30, 76), (76, 137), (137, 187), (187, 242)]
    for s, e in scenes:
        assert assess_quality(bikes_video.frames[s:e], meta=bikes_video.meta) is None, (s, e)


def test_blurred_real_footage_is_blurry(bikes_video):
    frames = S.blurred(bikes_video.frames[30:76], sigma=2.5)
    assert assess_quality(frames, meta=bikes_video.meta) == "blurry"


def test_sharpness_does_not_depend_on_the_frame_size():
    # The same scene rendered at 1x, 2x and 4x: measured at blur_short_side, within 15 %.
    sharp = [
        measure_quality(S.pan(height=h, width=h * 4 // 3, num_frames=4), meta=META).sharpness
        for h in (144, 288, 576)
    ]
    assert max(sharp) < 1.15 * min(sharp), sharp
