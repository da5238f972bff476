"""Pixel and flow dimensions: temporal_flickering (+ VBench's static filter), dynamic_degree,
motion_smoothness. Algorithms follow VBench's ``vbench/temporal_flickering.py``,
``vbench/dynamic_degree.py``, ``vbench/motion_smoothness.py`` and ``vbench/cli/static_filter.py``;
the flow network (RAFT) and the interpolator (AMT) are replaced by the weight-free substitutes
of :mod:`eval.flow`, and the results are labelled as such.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np

from eval.flow import FlowMethod, interpolate_middle, optical_flow, top_fraction_mean
from eval.frames import every_kth_index
from eval.metric import Metric, UnscorableVideoError, VideoSample, register_metric


def mean_abs_diff_score(frames: np.ndarray) -> float:
    """VBench temporal flickering: (255 - mean over consecutive pairs of the pixel MAE) / 255."""
    if len(frames) < 2:
        raise UnscorableVideoError(f"needs at least 2 frames, got {len(frames)}")
    f = frames.astype(np.float32)  # (T, H, W, 3)
    mae = np.abs(f[1:] - f[:-1]).mean(axis=(1, 2, 3))  # (T-1,)
    return float((255.0 - mae.mean()) / 255.0)


def is_static(frames: np.ndarray, method: FlowMethod = "dis") -> bool:
    """VBench's static filter: few consecutive pairs move more than 3 px (scaled by min(H, W)/256,
    top-2% flow magnitude), and the (first, last) and (last, first) pairs stay under
    ``thres * count_num * 2``."""
    h, w = frames.shape[1:3]
    thres = 3.0 * min(h, w) / 256.0
    count_num = round(2 * len(frames) / 16.0)
    count = 0
    # NOTE: flows are computed lazily; stopping at the first decisive pair gives VBench's answer
    # (it computes every flow, then returns at the same point) at a fraction of the cost.
    for a, b in itertools.pairwise(frames):
        count += top_fraction_mean(optical_flow(a, b, method), 0.02) > thres
        if count > count_num:
            return False
    ends = ((frames[0], frames[-1]), (frames[-1], frames[0]))
    return all(top_fraction_mean(optical_flow(a, b, method), 0.02) <= thres * count_num * 2 for a, b in ends)


def flow_method_label(method: FlowMethod) -> str:
    return "OpenCV DIS" if method == "dis" else "OpenCV Farneback"


@register_metric("temporal_flickering", doc="(255 - MAE of consecutive frames) / 255 on static videos")
class TemporalFlickering(Metric):
    """VBench temporal flickering, scored on the videos its static filter keeps."""

    name = "temporal_flickering"

    def __init__(self, cfg: Any) -> None:
        self.flow: FlowMethod = cfg.flow
        self.static_filter = cfg.static_filter
        if self.static_filter:
            self.method = f"substitute: static filter with {flow_method_label(self.flow)} flow (VBench: RAFT)"
        else:
            self.method = "substitute: no static filter (VBench filters static videos first)"
        self.comparable = False

    def compute(self, video: VideoSample) -> dict[str, Any]:
        if len(video.frames) < 2:
            raise UnscorableVideoError(f"needs at least 2 frames, got {len(video.frames)}")
        if self.static_filter and not is_static(video.frames, self.flow):
            raise UnscorableVideoError(
                "not static: VBench scores temporal_flickering only on videos its static filter keeps"
            )
        return {"video_results": mean_abs_diff_score(video.frames)}


def dynamic_params(*, num_frames: int, height: int, width: int, fps: float) -> tuple[float, int]:
    """VBench's (threshold, count): ``max(1, 8 / fps) * 6 * min(H, W) / 256`` and ``round(4 * T / 16)``."""
    return max(1.0, 8.0 / fps) * 6.0 * min(height, width) / 256.0, round(4 * num_frames / 16.0)


def reaches_count(scores: Iterable[float], *, thres: float, count_num: int) -> bool:
    """True once ``count_num`` scores exceed ``thres`` (VBench's ``check_move``); consumes lazily."""
    count = 0
    for s in scores:
        count += s > thres
        if count >= count_num:
            return True
    return False


def is_dynamic(frames: np.ndarray, *, fps: float, method: FlowMethod = "dis") -> bool:
    """VBench's dynamic test on frames already sampled at ~8 fps (top-5% flow magnitude per pair)."""
    h, w = frames.shape[1:3]
    thres, count_num = dynamic_params(num_frames=len(frames), height=h, width=w, fps=fps)
    # NOTE: flows are computed lazily; VBench computes them all but decides at the same pair.
    scores = (top_fraction_mean(optical_flow(a, b, method), 0.05) for a, b in itertools.pairwise(frames))
    return reaches_count(scores, thres=thres, count_num=count_num)


@register_metric("dynamic_degree", doc="share of videos whose optical flow (frames at ~8 fps) is large")
class DynamicDegree(Metric):
    """VBench dynamic degree with a weight-free flow in place of RAFT."""

    name = "dynamic_degree"

    def __init__(self, cfg: Any) -> None:
        self.flow: FlowMethod = cfg.flow
        self.method = f"substitute: {flow_method_label(self.flow)} flow (VBench: RAFT)"
        self.comparable = False

    def compute(self, video: VideoSample) -> dict[str, Any]:
        fps = video.fps if video.fps > 0 else 8.0
        frames = video.frames[every_kth_index(len(video.frames), fps)]
        if len(frames) < 2:
            raise UnscorableVideoError(f"needs at least 2 frames at ~8 fps, got {len(frames)}")
        return {"video_results": is_dynamic(frames, fps=fps, method=self.flow)}


def interpolation_error(frames: np.ndarray, method: FlowMethod) -> float:
    """Mean absolute error between the real odd frames and those interpolated from the even ones."""
    even, odd = frames[0::2], frames[1::2]
    if len(even) < 2:
        raise UnscorableVideoError(f"needs at least 3 frames, got {len(frames)}")
    errors = []
    for a, b, real in zip(even[:-1], even[1:], odd):
        mid = interpolate_middle(a, b, method)
        errors.append(np.abs(mid.astype(np.int16) - real.astype(np.int16)).mean())
    return float(np.mean(errors))


@register_metric("motion_smoothness", doc="(255 - error of interpolating odd frames from even ones) / 255")
class MotionSmoothness(Metric):
    """VBench motion smoothness with flow-warped interpolation in place of AMT."""

    name = "motion_smoothness"

    def __init__(self, cfg: Any) -> None:
        self.flow: FlowMethod = cfg.flow
        self.method = f"substitute: {flow_method_label(self.flow)} flow-warped interpolation (VBench: AMT-S)"
        self.comparable = False

    def compute(self, video: VideoSample) -> dict[str, Any]:
        return {"video_results": (255.0 - interpolation_error(video.frames, self.flow)) / 255.0}
