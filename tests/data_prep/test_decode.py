"""Analysis decoding: every frame at the analysis size; bad files raise VideoError with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep import synthetic as S
from data_prep.decode import DecodeConfig, analysis_size, decode_for_analysis
from vdiff.io.video import VideoError


def test_bikes_every_frame_at_analysis_size(bikes_video):
    v = bikes_video
    assert v.meta.num_frames == 250 and v.meta.fps == pytest.approx(25.0)
    assert (v.meta.width, v.meta.height) == (640, 272)
    assert v.frames.shape == (250, 128, 302, 3) and v.frames.dtype == np.uint8
    assert not v.truncated


def test_vtest_avi(vtest):
    v = decode_for_analysis(vtest, DecodeConfig(short_side=96))
    assert v.frames.shape == (795, 96, 128, 3)


def test_analysis_size_keeps_aspect_and_never_upscales():
    assert analysis_size(640, 272, 128) == (302, 128)
    assert analysis_size(272, 640, 128) == (128, 302)
    assert analysis_size(100, 60, 128) == (100, 60)


def test_frames_match_the_written_video(tmp_path):
    # NOTE: blurred, so yuv420p chroma subsampling of sharp colour edges does not dominate.
    frames = S.blurred(S.pan(num_frames=20, height=96, width=128), sigma=1.5)
    path = S.write_video(tmp_path / "a.mp4", frames, 24.0)
    v = decode_for_analysis(path, DecodeConfig(short_side=96, chunk_frames=7))
    assert v.frames.shape == frames.shape
    mse = ((v.frames.astype(np.float64) - frames) ** 2).mean()
    assert 10 * np.log10(255**2 / mse) > 30  # PSNR in dB


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty"), (b"this is not a video at all" * 100, "not a readable video")],
)
def test_bad_files_raise_video_error(tmp_path, content, reason):
    p = tmp_path / "bad.mp4"
    p.write_bytes(content)
    with pytest.raises(VideoError, match=reason):
        decode_for_analysis(p)


def test_missing_file_raises(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        decode_for_analysis(tmp_path / "nope.mp4")
