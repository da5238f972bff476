"""Pixel and flow dimensions on constructed videos with known answers."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from eval.config import EvalConfig
from eval.frames import every_kth_index, middle_frame_indices
from eval.metrics.temporal import (
    DYNAMIC_DEGREE_COMMIT,
    DynamicDegree,
    MotionSmoothness,
    TemporalFlickering,
    dynamic_params,
    is_static,
    mean_abs_diff_score,
    reaches_count,
)
from eval.registry import UnscorableVideoError, VideoSample
from eval.runner import decode
from eval.vbench import VBENCH_COMMITS
from vdiff.io.video import write_mp4


def sample(frames: np.ndarray, fps: float = 8.0) -> VideoSample:
    return VideoSample(path=Path("x-0.mp4"), prompt="x", frames=frames, fps=fps)


def test_flicker_score_closed_form_on_arrays(synth):
    # Uniform frames alternating 100 / 140: every consecutive MAE is 40.
    # float32 arithmetic, as VBench computes it
    assert mean_abs_diff_score(synth.flicker()) == pytest.approx((255 - 40) / 255, abs=1e-6)
    assert mean_abs_diff_score(synth.static()) == 1.0


def _vbench_flicker(frames: np.ndarray) -> float:
    """VBench's formula written out directly: per pair the mean of cv2.absdiff on float32 frames,
    then (255 - mean over pairs) / 255."""
    import cv2

    f = frames.astype(np.float32)
    maes = [np.mean(cv2.absdiff(f[i], f[i + 1])) for i in range(len(f) - 1)]
    return (255.0 - float(np.mean(maes))) / 255.0


@pytest.mark.parametrize("seed", [0, 1])
def test_flicker_score_equals_vbench_formula_on_textured_frames(seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, 24, 32, 3))
    noise = rng.integers(-30, 31, (9, 24, 32, 3))  # a different flicker in every pixel and frame
    frames = np.clip(base + noise, 0, 255).astype(np.uint8)  # (9, 24, 32, 3)
    assert mean_abs_diff_score(frames) == pytest.approx(_vbench_flicker(frames), abs=1e-6)
    assert mean_abs_diff_score(frames) < 0.95  # the textured flicker is really scored


def test_flicker_through_mp4_scores_every_video_as_vbench(tmp_path, synth):
    write_mp4(tmp_path / "flicker-0.mp4", synth.flicker(), fps=8, crf=0)
    write_mp4(tmp_path / "still-0.mp4", synth.static(), fps=8)
    metric = TemporalFlickering(EvalConfig())
    flicker, _ = decode(tmp_path / "flicker-0.mp4")
    still, _ = decode(tmp_path / "still-0.mp4")
    assert metric.compute(sample(flicker))["video_results"] == pytest.approx((255 - 40) / 255, abs=1.5 / 255)
    assert metric.compute(sample(still))["video_results"] == pytest.approx(1.0, abs=2e-3)
    assert metric.comparable and "fc4620b4" in metric.method


def test_static_test_rejects_moving_video_and_flicker_scores_it_anyway(synth):
    assert is_static(synth.static())
    assert not is_static(synth.linear())
    # VBench's temporal_flickering scores every video given; filtering is a separate step.
    assert TemporalFlickering(EvalConfig()).compute(sample(synth.linear()))["video_results"] < 1.0


def test_dynamic_degree_static_vs_moving(synth):
    metric = DynamicDegree(EvalConfig())
    assert metric.compute(sample(synth.static()))["video_results"] is False
    assert metric.compute(sample(synth.linear()))["video_results"] is True
    assert metric.aggregate([{"video_results": True}, {"video_results": False}]) == 0.5
    # The dimension score of a set: a static set scores 0, a set of panning videos 1.
    static_set = [metric.compute(sample(synth.static())) for _ in range(2)]
    moving_set = [metric.compute(sample(synth.linear())) for _ in range(2)]
    assert metric.aggregate(static_set) == 0.0 and metric.aggregate(moving_set) == 1.0


def test_dynamic_degree_threshold_rule():
    # 64 x 64 at 8 fps: threshold 6 * 64 / 256 = 1.5 px; 16 frames need round(4 * 16 / 16) = 4 pairs.
    assert dynamic_params(num_frames=16, height=64, width=64, fps=8.0) == (1.5, 4)
    # VBench f9d345a2 (current): 6 * min(H, W) / 256 at any fps; 512 x 320 scales it by 320 / 256.
    assert dynamic_params(num_frames=9, height=320, width=512, fps=4.0) == (6 * 320 / 256, 2)
    # VBench 11abda97 (2024-07-03 .. 07-13) multiplied by max(1, 8 / fps): doubled at 4 fps.
    old = dynamic_params(num_frames=9, height=320, width=512, fps=4.0, commit="11abda97")
    assert old == (2 * 6 * 320 / 256, 2)
    assert (
        dynamic_params(num_frames=9, height=320, width=512, fps=24.0, commit="11abda97")[0] == 6 * 320 / 256
    )
    with pytest.raises(ValueError, match="not a known VBench formula"):
        dynamic_params(num_frames=9, height=320, width=512, fps=4.0, commit="deadbeef")
    assert VBENCH_COMMITS["vbench/dynamic_degree.py"] == DYNAMIC_DEGREE_COMMIT
    assert DynamicDegree(EvalConfig()).comparable is False  # no RAFT weights: a substitute
    assert not reaches_count([1.6] * 3 + [0.0] * 12, thres=1.5, count_num=4)
    assert reaches_count([1.6] * 4 + [0.0] * 11, thres=1.5, count_num=4)
    assert not reaches_count([1.5] * 15, thres=1.5, count_num=4)  # strictly greater


def test_flicker_is_bit_exact_with_vbench_float32_bgr_mean():
    # VBench: per pair np.mean(cv2.absdiff(float32 BGR, float32 BGR)), then the float32 mean.
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 333, 517, 3), dtype=np.uint8)
    bgr = frames[..., ::-1]
    maes = [np.mean(cv2.absdiff(np.float32(a), np.float32(b))) for a, b in itertools.pairwise(bgr)]
    want = (255.0 - np.mean(np.array(maes)).item()) / 255.0
    assert mean_abs_diff_score(frames) == want


def test_vbench_frame_sampling():
    assert every_kth_index(10, 24.0) == [0, 3, 6, 9]  # round(24 / 8) = 3
    assert every_kth_index(5, 8.0) == [0, 1, 2, 3, 4]
    assert every_kth_index(5, 4.0) == [0, 1, 2, 3, 4]  # max(1, round(0.5)) = 1
    # 16 frames into 8 intervals [0,2), [2,4), ...: the middle of each is (a + b - 1) // 2.
    assert middle_frame_indices(8, 16) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert middle_frame_indices(8, 3) == [0, 1, 2, 2, 2, 2, 2, 2]


def test_motion_smoothness_linear_beats_jitter(synth):
    metric = MotionSmoothness(EvalConfig())
    static = metric.compute(sample(synth.static()))["video_results"]
    linear = metric.compute(sample(synth.linear()))["video_results"]
    jitter = metric.compute(sample(synth.jitter()))["video_results"]
    assert static == pytest.approx(1.0, abs=1e-9)
    assert linear > 0.99
    assert linear > jitter + 0.05
    with pytest.raises(UnscorableVideoError):
        metric.compute(sample(synth.static(n=2)))


def test_frames_too_small_for_flow_are_unscorable_not_a_crash():
    tiny = np.zeros((8, 8, 8, 3), np.uint8)
    with pytest.raises(UnscorableVideoError, match="too small"):
        DynamicDegree(EvalConfig()).compute(sample(tiny))


def test_reused_dis_gives_the_flow_of_a_fresh_one():
    from eval.flow import _optical_flow
    from tests.eval.conftest import linear_frames, texture

    pairs = [(linear_frames(2, seed=s)[0], linear_frames(2, seed=s)[1]) for s in range(2)]
    pairs.append((texture(3), np.roll(texture(3), 3, axis=1)))  # another size: buffers are resized
    for a, b in [*pairs, *pairs[::-1]]:
        fresh = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        want = fresh.calc(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)
        assert np.array_equal(_optical_flow(a, b, "dis"), want)
