"""Weight-free optical flow (OpenCV DIS or Farneback) and flow-warped frame interpolation.

These are the labelled substitutes for VBench's RAFT (dynamic_degree, static filter) and
AMT (motion_smoothness); results computed with them are never leaderboard-comparable.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from eval.metric import UnscorableVideoError

FlowMethod = Literal["dis", "farneback"]


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def optical_flow(a: np.ndarray, b: np.ndarray, method: FlowMethod = "dis") -> np.ndarray:
    """Dense flow from RGB frame ``a`` to ``b``: (H, W, 2) float32, so that ``a(x) ~ b(x + flow(x))``."""
    if max(a.shape[:2]) < 12:
        raise UnscorableVideoError(f"frames of {a.shape[0]}x{a.shape[1]} px are too small for optical flow")
    ga, gb = _gray(a), _gray(b)
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return dis.calc(ga, gb, None)
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(ga, gb, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    raise ValueError(f"unknown flow method {method!r}; use 'dis' or 'farneback'")


def top_fraction_mean(flow: np.ndarray, fraction: float) -> float:
    """Mean of the largest ``fraction`` of flow magnitudes (VBench: 5% dynamic degree, 2% static filter)."""
    mag = np.sqrt(np.square(flow[..., 0]) + np.square(flow[..., 1])).ravel()
    # NOTE: VBench takes int(H*W*fraction) values; at least one keeps tiny frames defined.
    k = max(1, int(mag.size * fraction))
    return float(np.mean(np.partition(mag, mag.size - k)[-k:]))


def warp(frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warp: ``out(x) = frame(x + flow(x))`` with bilinear sampling, float32."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(
        frame.astype(np.float32),
        gx + flow[..., 0],
        gy + flow[..., 1],
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def interpolate_middle(a: np.ndarray, b: np.ndarray, method: FlowMethod = "dis") -> np.ndarray:
    """The frame halfway between ``a`` and ``b`` (uint8), from bidirectional flow.

    NOTE: intermediate flows use the linear-motion approximation of Super SloMo (Jiang et al.,
    CVPR 2018) at t = 1/2: F_t0 = (F_10 - F_01) / 4, F_t1 = (F_01 - F_10) / 4; the two warped
    frames are averaged.
    """
    f01 = optical_flow(a, b, method)
    f10 = optical_flow(b, a, method)
    ft0 = 0.25 * (f10 - f01)
    ft1 = 0.25 * (f01 - f10)
    mid = 0.5 * warp(a, ft0) + 0.5 * warp(b, ft1)
    return np.clip(np.rint(mid), 0, 255).astype(np.uint8)
