"""Pixel and flow dimensions: temporal_flickering, dynamic_degree, motion_smoothness, and the flow
tests of VBench's static filter (the step itself is :mod:`eval.static_filter`).

Formulas follow VBench's ``vbench/temporal_flickering.py``, ``vbench/dynamic_degree.py``,
``vbench/motion_smoothness.py`` and ``vbench/cli/static_filter.py`` at the commits in
:data:`eval.vbench.VBENCH_COMMITS`. Flow is RAFT (:mod:`eval.models.raft`, VBench's
``raft-things.pth``) when ``weights.raft`` is given, else a labelled weight-free substitute
(:mod:`eval.flow`); motion_smoothness interpolates with AMT-S (:mod:`eval.models.amt`, VBench's
``amt-s.pth``) when ``weights.amt_s`` is given, else with labelled flow-warped interpolation.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from eval.flow import FlowFn, FlowMethod, cached, interpolate_middle, optical_flow, top_fraction_mean
from eval.frames import every_kth_index
from eval.metric import Metric, UnscorableVideoError, VideoSample, register_metric
from eval.vbench import VBENCH_COMMITS

FLICKER_COMMIT = VBENCH_COMMITS["vbench/temporal_flickering.py"]
DYNAMIC_DEGREE_COMMIT = VBENCH_COMMITS["vbench/dynamic_degree.py"]
MOTION_SMOOTHNESS_COMMIT = VBENCH_COMMITS["vbench/motion_smoothness.py"]
# NOTE: 11abda97 (2024-07-03, "[fix] fps<8 bug") multiplied the threshold by max(1, 8 / fps);
# fc4620b4 (2024-07-13) dropped the factor again, and every later commit (f9d345a2, current)
# uses 6 * min(H, W) / 256.
DYNAMIC_DEGREE_FPS_FACTOR_COMMIT = "11abda977edaa0edbfc3c9b75a33c9c942a9ef6f"
DYNAMIC_DEGREE_FORMULAS: dict[str, str] = {
    DYNAMIC_DEGREE_COMMIT: "6 * min(H, W) / 256",
    DYNAMIC_DEGREE_FPS_FACTOR_COMMIT: "max(1, 8 / fps) * 6 * min(H, W) / 256",
}


def resolve_dynamic_degree_commit(commit: str) -> str:
    """The full hash of a known dynamic_degree formula from a hash or a prefix of >= 7 characters."""
    found = [c for c in DYNAMIC_DEGREE_FORMULAS if len(commit) >= 7 and c.startswith(commit.lower())]
    if len(found) != 1:
        known = ", ".join(f"{c[:8]} ({f})" for c, f in DYNAMIC_DEGREE_FORMULAS.items())
        raise ValueError(
            f"dynamic_degree_commit {commit!r} is not a known VBench formula; use one of: {known}"
        )
    return found[0]


def mean_abs_diff_score(frames: np.ndarray) -> float:
    """VBench ``cal_score``: (255 - mean over consecutive pairs of the pixel MAE) / 255.

    NOTE: computed as VBench does, bit for bit: float32 frames in BGR order (VBench reads with
    cv2), one float32 mean per pair, then the float32 mean of those.
    """
    if len(frames) < 2:
        raise UnscorableVideoError(f"needs at least 2 frames, got {len(frames)}")
    bgr = np.ascontiguousarray(frames[..., ::-1]).astype(np.float32)  # (T, H, W, 3)
    mae = np.array([np.mean(np.abs(a - b)) for a, b in itertools.pairwise(bgr)])  # (T-1,) float32
    return (255.0 - np.mean(mae).item()) / 255.0


def as_flow_fn(flow: FlowFn | FlowMethod) -> FlowFn:
    """A flow callable from a callable (e.g. RAFT) or the name of a weight-free substitute."""
    if callable(flow):
        return flow
    return lambda a, b: optical_flow(a, b, flow)


def is_static(frames: np.ndarray, flow: FlowFn | FlowMethod = "dis") -> bool:
    """VBench's static filter (``StaticFilter.check_static``): at most ``count_num`` consecutive pairs
    move more than ``thres`` (top-2% flow magnitude), and (first, last), (last, first) stay under
    ``thres * count_num * 2``; ``thres = 3 * min(H, W) / 256``, ``count_num = round(2 * T / 16)``."""
    fn = as_flow_fn(flow)
    h, w = frames.shape[1:3]
    thres = 3.0 * min(h, w) / 256.0
    count_num = round(2 * len(frames) / 16.0)
    count = 0
    # NOTE: flows are computed lazily; stopping at the first decisive pair gives VBench's answer
    # (it computes every flow, then returns at the same point) at a fraction of the cost.
    for a, b in itertools.pairwise(frames):
        count += top_fraction_mean(fn(a, b), 0.02) > thres
        if count > count_num:
            return False
    ends = ((frames[0], frames[-1]), (frames[-1], frames[0]))
    return all(top_fraction_mean(fn(a, b), 0.02) <= thres * count_num * 2 for a, b in ends)


def flow_method_label(method: FlowMethod) -> str:
    return "OpenCV DIS" if method == "dis" else "OpenCV Farneback"


def raft_path(cfg: Any) -> str:
    """``weights.raft`` or ``$VDIFF_RAFT``; empty when neither is set (then a substitute runs)."""
    return cfg.weights.raft or os.environ.get("VDIFF_RAFT", "")


def build_flow(cfg: Any, *, dimension: str) -> tuple[FlowFn, str, bool]:
    """(flow, label, comparable): RAFT when its weights are given, else the configured substitute."""
    if raft_path(cfg):
        from eval.metric import resolve_weight
        from eval.models.raft import RaftFlow

        path = resolve_weight(
            cfg.weights.raft,
            key="weights.raft",
            env="VDIFF_RAFT",
            what="RAFT raft-things.pth",
            dimension=dimension,
        )
        raft = RaftFlow.from_checkpoint(path, device=cfg.device)
        # NOTE: keyed by the weights file, so the dimensions of a video share RAFT's flows.
        return cached(raft, f"raft:{path.resolve()}"), "RAFT raft-things (20 iterations)", True
    label = f"substitute: {flow_method_label(cfg.flow)} flow (VBench: RAFT)"
    return as_flow_fn(cfg.flow), label, False


@register_metric("temporal_flickering", doc="(255 - MAE of consecutive frames) / 255, every video given")
class TemporalFlickering(Metric):
    """VBench temporal flickering: scores every video it is given, as VBench does. Run the static
    filter first (``vdiff eval --static-filter``) to score the videos VBench's protocol keeps."""

    name = "temporal_flickering"

    def __init__(self, cfg: Any) -> None:
        self.method = f"VBench temporal_flickering.py @ {FLICKER_COMMIT[:8]}"
        self.comparable = True

    def compute(self, video: VideoSample) -> dict[str, Any]:
        return {"video_results": mean_abs_diff_score(video.frames)}


def dynamic_params(
    *, num_frames: int, height: int, width: int, fps: float, commit: str = DYNAMIC_DEGREE_COMMIT
) -> tuple[float, int]:
    """VBench's (threshold, count) at ``commit``: ``6 * min(H, W) / 256`` (current; 11abda97 times
    ``max(1, 8 / fps)``) and ``round(4 * T / 16)`` for ``T`` frames after sampling."""
    thres = 6.0 * (min(height, width) / 256.0)
    if resolve_dynamic_degree_commit(commit) == DYNAMIC_DEGREE_FPS_FACTOR_COMMIT:
        thres = max(1.0, 8.0 / fps) * thres
    return thres, round(4 * (num_frames / 16.0))


def reaches_count(scores: Iterable[float], *, thres: float, count_num: int) -> bool:
    """True once ``count_num`` scores exceed ``thres`` (VBench's ``check_move``); consumes lazily."""
    count = 0
    for s in scores:
        count += s > thres
        if count >= count_num:
            return True
    return False


def is_dynamic(
    frames: np.ndarray,
    *,
    fps: float,
    flow: FlowFn | FlowMethod = "dis",
    commit: str = DYNAMIC_DEGREE_COMMIT,
) -> bool:
    """VBench's dynamic test on frames already sampled at ~8 fps (top-5% flow magnitude per pair)."""
    fn = as_flow_fn(flow)
    h, w = frames.shape[1:3]
    thres, count_num = dynamic_params(num_frames=len(frames), height=h, width=w, fps=fps, commit=commit)
    # NOTE: flows are computed lazily; VBench computes them all but decides at the same pair.
    scores = (top_fraction_mean(fn(a, b), 0.05) for a, b in itertools.pairwise(frames))
    return reaches_count(scores, thres=thres, count_num=count_num)


@register_metric("dynamic_degree", doc="share of videos whose optical flow (frames at ~8 fps) is large")
class DynamicDegree(Metric):
    """VBench dynamic degree: RAFT when ``weights.raft`` is given, else a weight-free flow."""

    name = "dynamic_degree"

    def __init__(self, cfg: Any) -> None:
        self.commit = resolve_dynamic_degree_commit(
            getattr(cfg, "dynamic_degree_commit", DYNAMIC_DEGREE_COMMIT)
        )
        self.flow, label, comparable = build_flow(cfg, dimension=self.name)
        self.method = f"VBench dynamic_degree.py @ {self.commit[:8]}, {label}"
        # NOTE: only the current formula is leaderboard-comparable.
        self.comparable = comparable and self.commit == DYNAMIC_DEGREE_COMMIT

    def compute(self, video: VideoSample) -> dict[str, Any]:
        fps = video.fps if video.fps > 0 else 8.0
        frames = video.frames[every_kth_index(len(video.frames), fps)]
        if len(frames) < 2:
            raise UnscorableVideoError(f"needs at least 2 frames at ~8 fps, got {len(frames)}")
        return {"video_results": is_dynamic(frames, fps=fps, flow=self.flow, commit=self.commit)}


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


def amt_path(cfg: Any) -> str:
    """``weights.amt_s`` or ``$VDIFF_AMT_S``; empty when neither is set (then a substitute runs)."""
    return cfg.weights.amt_s or os.environ.get("VDIFF_AMT_S", "")


@register_metric("motion_smoothness", doc="(255 - error of interpolating odd frames from even ones) / 255")
class MotionSmoothness(Metric):
    """VBench motion smoothness: AMT-S when ``weights.amt_s`` is given (VBench's method), else
    flow-warped interpolation (a labelled substitute)."""

    name = "motion_smoothness"

    def __init__(self, cfg: Any) -> None:
        self.flow: FlowMethod = cfg.flow
        self.amt: Callable[[np.ndarray], np.ndarray] | None = None
        if amt_path(cfg):
            from eval.metric import resolve_weight
            from eval.models.amt import AmtInterpolator

            path = resolve_weight(
                cfg.weights.amt_s,
                key="weights.amt_s",
                env="VDIFF_AMT_S",
                what="AMT-S amt-s.pth",
                dimension=self.name,
            )
            self.amt = AmtInterpolator.from_checkpoint(path, device=cfg.device)
            self.method = f"VBench motion_smoothness.py @ {MOTION_SMOOTHNESS_COMMIT[:8]}, AMT-S amt-s.pth"
            self.comparable = True
        else:
            self.method = (
                f"substitute: {flow_method_label(self.flow)} flow-warped interpolation (VBench: AMT-S)"
            )
            self.comparable = False

    def compute(self, video: VideoSample) -> dict[str, Any]:
        if self.amt is not None:
            from eval.models.amt import vbench_motion_score

            return {"video_results": vbench_motion_score(video.frames, self.amt)}
        return {"video_results": (255.0 - interpolation_error(video.frames, self.flow)) / 255.0}
