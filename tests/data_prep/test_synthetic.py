"""Synthetic video generators: shapes, sizes, known content."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from data_prep import synthetic as S
from data_prep.decode import decode_for_analysis


def test_generators_return_uint8_rgb_video():
    for frames in (S.static_shot(), S.pan(), S.whip_pan(), S.moving_shapes(), S.blurred(S.pan(num_frames=4))):
        assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3


def test_pan_moves_content_by_the_requested_speed():
    # 0.25 frame widths per second at 24 fps, 128 px wide: 32 px per second, 4 px per 3 frames.
    frames = S.pan(speed=0.25, width=128, height=96, fps=24.0, num_frames=4)
    a, b = frames[0].astype(np.int16), frames[3].astype(np.int16)
    err = {dx: np.abs(a[:, 8 + dx : 120 + dx] - b[:, 8:120]).mean() for dx in range(0, 9)}
    assert min(err, key=err.get) == 4


def test_static_shot_is_static_up_to_noise():
    frames = S.static_shot(noise=0.0)
    assert np.array_equal(frames[0], frames[-1])


def test_handheld_shakes_the_same_way_at_any_frame_rate_and_size():
    # The shake is a function of time: frame 0 and the frame at 0.5 s match across renders.
    def at(fps, h, w):
        frames = S.handheld(
            amplitude=0.02, seed=3, fps=fps, height=h, width=w, num_frames=int(fps) + 1, noise=0
        )
        return [cv2.resize(frames[i], (64, 48), interpolation=cv2.INTER_AREA) for i in (0, int(fps // 2))]

    a, b = at(24.0, 96, 128), at(60.0, 192, 256)
    for x, y in zip(a, b):
        assert np.abs(x.astype(int) - y).mean() < 6
    assert np.abs(a[0].astype(int) - a[1]).mean() > 15  # and it does move


def test_shutter_blurs_along_the_motion_only():
    sharp = S.camera_move(speed=1.0, num_frames=4, noise=0)[2].astype(np.float32)
    blurred = S.camera_move(speed=1.0, num_frames=4, noise=0, shutter=0.5)[2].astype(np.float32)

    def kept(axis: int) -> float:  # share of the gradient energy along x (1, the pan) or y (0) left
        return float((np.diff(blurred, axis=axis) ** 2).mean() / (np.diff(sharp, axis=axis) ** 2).mean())

    # measured: 0.35 of it along the pan, 0.78 across
    assert kept(1) < 0.5 and kept(1) < 0.6 * kept(0)


def test_eased_pan_starts_and_ends_at_rest():
    frames = S.camera_move(speed=0.5, ease=0.5, num_frames=48, noise=0)  # 2 s at 24 fps
    d = [np.abs(frames[i].astype(int) - frames[i + 1]).mean() for i in range(47)]
    assert d[0] < 0.3 * d[23] and d[-1] < 0.3 * d[23]


def test_walking_subject_moves_over_a_still_background():
    frames = S.walking_subject(size=1.0, num_frames=24, noise=0)
    changed = np.abs(frames[0].astype(int) - frames[-1]).max(axis=-1) > 10  # (H, W)
    assert 0.05 < changed.mean() < 0.6


def test_flash_brightens_exactly_the_flash_frames():
    base = S.pan(num_frames=10)
    out = S.flash(base, at=4, length=2)
    lum = out.reshape(10, -1).mean(1) - base.reshape(10, -1).mean(1)
    assert np.all(lum[[4, 5]] > 50) and np.all(lum[[0, 1, 2, 3, 6, 7, 8, 9]] == 0)


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_moving_shape_moves_in_its_direction(direction):
    frames = S.moving_shapes("red", "square", direction, num_frames=20)
    red = (frames[..., 0] > 180) & (frames[..., 1] < 80) & (frames[..., 2] < 80)  # (T, H, W)
    ys, xs = [], []
    for m in red[[0, -1]]:
        yy, xx = np.nonzero(m)
        ys.append(yy.mean())
        xs.append(xx.mean())
    dx, dy = xs[1] - xs[0], ys[1] - ys[0]
    expected = {"left": dx < -5, "right": dx > 5, "up": dy < -5, "down": dy > 5}
    assert expected[direction], (dx, dy)
    assert S.shape_caption("red", "square", direction) == f"a red square moving {direction}"


def test_moving_shapes_rejects_unknown_names():
    with pytest.raises(ValueError, match="color"):
        S.moving_shapes("mauve")


def test_write_video_round_trips(tmp_path):
    # NOTE: blurred, so yuv420p chroma subsampling of sharp colour edges does not dominate.
    frames = S.blurred(S.pan(num_frames=12, height=96, width=128), sigma=1.5)
    path = S.write_video(tmp_path / "pan.mp4", frames, 24.0)
    video = decode_for_analysis(path)
    assert video.meta.num_frames == 12 and video.meta.fps == pytest.approx(24.0)
    mse = ((video.frames.astype(np.float64) - frames) ** 2).mean()
    assert 10 * np.log10(255**2 / mse) > 30  # PSNR in dB
