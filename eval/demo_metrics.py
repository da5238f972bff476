"""Demo alignment metrics: does a generated video show the colour, shape and motion it was asked for?

Classical computer vision, no weights. For each video (T, H, W, 3):

1. the background of each frame is its median colour (the shape covers a small part of it);
   the foreground is the pixels far from it (35% of the frame's largest distance, at least
   ``min_contrast`` grey levels);
2. **colour**: the hue of the mean foreground colour, nearest hue of the given palette
   (the demo passes ``data_prep.demo_world.PALETTE``);
3. **shape**: the largest foreground blob of each frame is compared (IoU) with a circle, a
   square and an up-pointing triangle filling its bounding box; the best mean IoU wins;
4. **direction**: a line is fitted to the foreground centroid over time; the axis with the
   larger slope and its sign give left/right/up/down.

On real demo-world videos these recover the labels (accuracy ~1.0); against shuffled labels
they score at chance (tests/eval/test_demo_metrics.py checks both).
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
"""Shapes the metric tells apart (triangles point up)."""

DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
"""Directions and their unit (dx, dy) in image coordinates (y grows downwards)."""


@dataclass(frozen=True)
class Label:
    """What a video should show."""

    color: str
    shape: str
    direction: str


@dataclass(frozen=True)
class Prediction:
    """What the metrics read from one video (None where no foreground was found)."""

    color: str | None
    shape: str | None
    direction: str | None
    foreground_frames: int
    """frames in which a foreground blob was found"""


def _hue(rgb: Sequence[float]) -> float:
    r, g, b = (float(v) / 255.0 for v in rgb)
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def foreground_masks(frames: np.ndarray, *, min_contrast: float = 30.0) -> np.ndarray:
    """(T, H, W) bool masks of the pixels far from each frame's median (background) colour."""
    f = frames.astype(np.float32)  # (T, H, W, 3)
    bg = np.median(f.reshape(f.shape[0], -1, 3), axis=1)  # (T, 3)
    dist = np.linalg.norm(f - bg[:, None, None, :], axis=-1)  # (T, H, W)
    thresh = np.maximum(min_contrast, 0.35 * dist.reshape(len(f), -1).max(axis=1))  # (T,)
    return dist > thresh[:, None, None]


def _largest_blob(mask: np.ndarray) -> np.ndarray | None:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == k


def _templates(h: int, w: int) -> dict[str, np.ndarray]:
    """Circle, square and up-pointing triangle masks filling an h × w box (drawn 8× larger)."""
    s = 8
    out = {}
    for shape in SHAPES:
        img = np.zeros((h * s, w * s), np.uint8)
        if shape == "circle":
            cv2.ellipse(img, (w * s // 2, h * s // 2), (w * s // 2, h * s // 2), 0, 0, 360, 1, -1)
        elif shape == "square":
            img[:] = 1
        else:
            pts = np.array([[w * s / 2, 0], [w * s - 1, h * s - 1], [0, h * s - 1]], np.int32)
            cv2.fillPoly(img, [pts], 1)
        out[shape] = cv2.resize(img.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0.5
    return out


def shape_ious(crop: np.ndarray) -> dict[str, float]:
    """IoU of a blob cropped to its bounding box with each shape's template, (h, w) bool."""
    ious = {}
    for shape, tmpl in _templates(*crop.shape).items():
        ious[shape] = float((crop & tmpl).sum() / max((crop | tmpl).sum(), 1))
    return ious


def analyse_video(
    frames: np.ndarray,
    *,
    palette: Mapping[str, Sequence[int]],
    min_contrast: float = 30.0,
    min_area: int = 4,
) -> Prediction:
    """Read colour (a ``palette`` name), shape and direction of motion from (T, H, W, 3) uint8 frames."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got shape {frames.shape}")
    masks = foreground_masks(frames, min_contrast=min_contrast)
    h, w = frames.shape[1:3]
    colors, times, centers = [], [], []
    shape_scores: dict[str, list[float]] = {s: [] for s in SHAPES}
    edge_scores: dict[str, list[float]] = {s: [] for s in SHAPES}
    for t, mask in enumerate(masks):
        blob = _largest_blob(mask)
        if blob is None or blob.sum() < min_area:
            continue
        ys, xs = np.nonzero(blob)
        times.append(t)
        centers.append((xs.mean(), ys.mean()))
        colors.append(frames[t][blob].astype(np.float32).mean(axis=0))
        crop = blob[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        # NOTE: a blob cut by the frame edge has the wrong outline; such frames vote for the
        # shape only when no frame shows the whole blob (often so for blurry generated videos).
        inside = ys.min() > 0 and xs.min() > 0 and ys.max() < h - 1 and xs.max() < w - 1
        for shape, iou in shape_ious(crop).items():
            (shape_scores if inside else edge_scores)[shape].append(iou)
    if not times:
        return Prediction(None, None, None, 0)
    hue = _hue(np.mean(colors, axis=0))
    color = min(palette, key=lambda c: _hue_distance(hue, _hue(palette[c])))
    votes = shape_scores if shape_scores[SHAPES[0]] else edge_scores
    shape = max(SHAPES, key=lambda s: np.mean(votes[s])) if votes[SHAPES[0]] else None
    direction = None
    if len(times) >= 2:
        c = np.asarray(centers)  # (N, 2) x, y
        tt = np.asarray(times, np.float64)
        vx, vy = np.polyfit(tt, c[:, 0], 1)[0], np.polyfit(tt, c[:, 1], 1)[0]
        step = (int(np.sign(vx)), 0) if abs(vx) >= abs(vy) else (0, int(np.sign(vy)))
        direction = next((d for d, v in DIRECTIONS.items() if v == step), None)
    return Prediction(color, shape, direction, len(times))


def score(predictions: Sequence[Prediction], labels: Sequence[Label]) -> dict[str, float]:
    """``color_accuracy``, ``shape_accuracy``, ``direction_accuracy``: fractions in [0, 1]."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        raise ValueError("no videos to score")
    n = len(labels)
    return {
        "color_accuracy": sum(p.color == y.color for p, y in zip(predictions, labels)) / n,
        "shape_accuracy": sum(p.shape == y.shape for p, y in zip(predictions, labels)) / n,
        "direction_accuracy": sum(p.direction == y.direction for p, y in zip(predictions, labels)) / n,
    }


def score_videos(videos: Sequence[tuple[str | Path, Label]], *, palette: Mapping[str, Sequence[int]]) -> dict:
    """Read each mp4, analyse it and score it against its combination.

    Returns the three accuracies and ``videos``: one row per video with what was read.
    """
    from vdiff.io.video import read_frames

    preds = [analyse_video(read_frames(path), palette=palette) for path, _ in videos]
    out: dict = score(preds, [c for _, c in videos])
    out["videos"] = [
        {"path": str(path), "expected": asdict(combo), "predicted": asdict(p)}
        for (path, combo), p in zip(videos, preds)
    ]
    return out
