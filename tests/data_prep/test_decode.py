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


def test_vtest_avi(vtest_video):
    assert vtest_video.frames.shape == (795, 128, 170, 3)
    assert (vtest_video.meta.width, vtest_video.meta.height, vtest_video.meta.fps) == (768, 576, 10.0)


def test_analysis_size_keeps_aspect_and_never_upscales():
    assert analysis_size(640, 272, 128) == (302, 128)
    assert analysis_size(272, 640, 128) == (128, 302)
    assert analysis_size(100, 60, 128) == (100, 60)


def test_frames_match_the_written_video(tmp_path):
    # NOTE: blurred, so yuv420p chroma subsampling of sharp colour edges does not dominate.
    frames = S.blurred(S.pan(num_frames=20, height=96, width=128), sigma=1.5)
    path = S.write_video(tmp_path / "a.mp4", frames, 24.0)
    v = decode_for_analysis(path, DecodeConfig(short_side=96))
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


def _corrupt_second_half(data: bytes) -> bytes:
    """Overwrite bytes in the second half of the media data: frames after it cannot decode."""
    start = data.find(b"mdat") + len(data) // 2
    rng = np.random.default_rng(0)
    out = bytearray(data)
    for i in rng.integers(start, len(out) - 16, 60):
        out[int(i)] = int(rng.integers(0, 256))
    return bytes(out)


def _faststart_mp4(path, frames, fps):
    import av

    # NOTE: moov first, as downloads and streaming files are written; then a cut file still
    # has its index.
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=int(fps))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_corrupt_stream_yields_the_frames_before_the_break(tmp_path):
    frames = S.pan(num_frames=60, height=96, width=128)
    good = tmp_path / "good.mp4"
    _faststart_mp4(good, frames, 24)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(_corrupt_second_half(good.read_bytes()))
    v = decode_for_analysis(bad)
    assert v.truncated and 0 < v.meta.num_frames < len(frames) and len(v.frames) == v.meta.num_frames
    # frame i of the prefix is frame i of the source (indices stay aligned for the clip spans)
    src = frames.reshape(len(frames), -1).astype(np.float32)
    for i, f in enumerate(v.frames.reshape(len(v.frames), -1).astype(np.float32)):
        assert int(np.abs(src - f).mean(axis=1).argmin()) == i


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_file_raises_with_the_file_name(tmp_path, keep):
    frames = S.pan(num_frames=60, height=96, width=128)
    good = tmp_path / "good.mp4"
    S.write_video(good, frames, 24.0)
    cut = tmp_path / "cut.mp4"
    data = good.read_bytes()
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(VideoError, match=r"cut\.mp4"):
        decode_for_analysis(cut)


def test_video_too_large_for_analysis_memory_is_refused(bikes):
    # 250 frames x 302 x 128 x 3 bytes = 27.6 MiB
    with pytest.raises(VideoError, match="max_memory_mb"):
        decode_for_analysis(bikes, DecodeConfig(max_memory_mb=20))


def test_config_validation_names_the_key():
    from vdiff.config import ConfigError, load_config

    with pytest.raises((ValueError, ConfigError), match="short_side"):
        load_config(DecodeConfig, None, ["short_side=4"])


def test_audio_only_file_raises(tmp_path):
    import wave

    p = tmp_path / "sound.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(8000, np.int16).tobytes())
    with pytest.raises(VideoError, match=r"sound\.wav"):
        decode_for_analysis(p)
