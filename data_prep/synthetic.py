"""Synthetic test and demo videos with known content: pans, whip pans, flashes, cuts, blur, dark.

Every generator returns (T, H, W, 3) uint8 RGB frames. Scenes are textured (solid shapes and smooth
noise over a colour gradient) so optical flow and scene detection see real signal. Camera motion is
rendered by sampling a fixed world texture through a moving window with sub-pixel bilinear
warps, so the same motion rendered at another resolution or frame rate shows the same content
moving by the same fraction of the frame per second: ``speed`` is in frame widths per second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from vdiff.io.video import write_mp4

Direction = Literal["left", "right", "up", "down"]
Shape = Literal["circle", "square", "triangle"]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 60),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 50, 200),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}
"""Colour names usable in :func:`moving_shapes` and their RGB values."""

_WORLD_H = 256
"""height of the world texture in texture pixels; one frame height spans all of it"""


def texture(height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """A (H, W, 3) uint8 world texture: a colour gradient, smooth noise and random solid shapes.

    The shapes give sharp edges (what flow, sharpness and cut detection see in real footage)
    between flat regions, so a pan changes pixels near edges, not everywhere.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    ramp = (xx / max(width - 1, 1) * 0.6 + yy / max(height - 1, 1) * 0.4)[..., None]
    img = c0 * (1 - ramp) + c1 * ramp  # (H, W, 3)
    for cell, amp in ((96, 30.0), (32, 15.0)):
        small = rng.normal(0, 1, (max(2, height // cell + 2), max(2, width // cell + 2), 3)).astype(
            np.float32
        )
        img += amp * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(max(4, int(height * width / 1500))):
        colour = tuple(int(v) for v in rng.uniform(20, 235, 3))
        cx, cy = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        r = int(rng.uniform(6, 28))
        if rng.random() < 0.5:
            axes = (r, int(r * rng.uniform(0.4, 1.0)))
            cv2.ellipse(img, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(img, (cx - r, cy - r // 2), (cx + r, cy + r // 2), colour, -1, cv2.LINE_AA)
    return img


def _render_window(world: np.ndarray, *, x0: float, y0: float, height: int, width: int) -> np.ndarray:
    """Sample the world through a window of height ``_WORLD_H`` texture pixels at (x0, y0)."""
    scale = _WORLD_H / height  # texture pixels per output pixel
    m = np.array([[scale, 0, x0], [0, scale, y0]], np.float32)  # output -> world coordinates
    return cv2.warpAffine(
        world,
        m,
        (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT,
    )


def camera_move(
    *,
    speed: float,
    direction: Direction = "left",
    num_frames: int = 48,
    height: int = 96,
    width: int = 128,
    fps: float = 24.0,
    seed: int = 0,
    noise: float = 2.0,
    shake: float = 0.0,
) -> np.ndarray:
    """A camera panning/tilting over a textured world at ``speed`` frame widths per second.

    ``direction`` is where the content moves on screen (``"left"``: the camera pans right).
    ``noise`` adds Gaussian sensor noise of that standard deviation (grey levels). ``shake``
    jolts the camera every frame by a random offset of that standard deviation, in frame
    widths (a hand-held camera: 0.01-0.03).
    """
    aspect = width / height
    world_w_frame = _WORLD_H * aspect  # a frame's width in texture pixels
    travel = abs(speed) * world_w_frame * num_frames / fps  # texture pixels moved in total
    horizontal = direction in ("left", "right")
    margin = int(4 * shake * world_w_frame) + 8
    ww = int(world_w_frame + (travel if horizontal else 0)) + 2 * margin
    wh = int(_WORLD_H + (0 if horizontal else travel)) + 2 * margin
    world = texture(wh, ww, seed=seed)
    rng = np.random.default_rng(seed + 1)
    jolts = np.clip(rng.normal(0, shake * world_w_frame, (num_frames, 2)), -margin + 1, margin - 1)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        d = abs(speed) * world_w_frame * t / fps
        x0 = margin + jolts[t, 0] + {"left": d, "right": travel - d}.get(direction, 0.0)
        y0 = margin + jolts[t, 1] + {"up": d, "down": travel - d}.get(direction, 0.0)
        frame = _render_window(world, x0=x0, y0=y0, height=height, width=width)
        if noise > 0:
            frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
        frames[t] = frame
    return frames


def static_shot(
    *, num_frames: int = 48, height: int = 96, width: int = 128, seed: int = 0, noise: float = 2.0
) -> np.ndarray:
    """A locked-off camera on a textured scene; only sensor noise changes."""
    return camera_move(speed=0.0, num_frames=num_frames, height=height, width=width, seed=seed, noise=noise)


def pan(
    *,
    speed: float = 0.25,
    direction: Direction = "left",
    num_frames: int = 48,
    height: int = 96,
    width: int = 128,
    fps: float = 24.0,
    seed: int = 0,
) -> np.ndarray:
    """An ordinary pan: ``speed`` frame widths per second (0.1–0.4 is typical footage)."""
    return camera_move(
        speed=speed,
        direction=direction,
        num_frames=num_frames,
        height=height,
        width=width,
        fps=fps,
        seed=seed,
    )


def whip_pan(
    *, num_frames: int = 24, height: int = 96, width: int = 128, fps: float = 24.0, seed: int = 0
) -> np.ndarray:
    """A whip pan: three frame widths per second, smeared by horizontal motion blur."""
    frames = camera_move(speed=3.0, num_frames=num_frames, height=height, width=width, fps=fps, seed=seed)
    k = max(3, round(width * 3.0 / fps * 0.5) | 1)  # half a frame's travel, odd
    kernel = np.full((1, k), 1.0 / k, np.float32)
    return np.stack([cv2.filter2D(f, -1, kernel, borderType=cv2.BORDER_REFLECT) for f in frames])


def flash(frames: np.ndarray, *, at: int, length: int = 2, strength: float = 0.7) -> np.ndarray:
    """Blend ``length`` frames from ``at`` towards white (a camera flash); the content returns after."""
    out = frames.copy()
    sl = out[at : at + length].astype(np.float32)
    out[at : at + length] = np.clip(sl * (1 - strength) + 255.0 * strength, 0, 255).astype(np.uint8)
    return out


def hard_cuts(scenes: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """Concatenate scenes (same H, W) with hard cuts; return frames and the cut frame indices."""
    cuts = list(np.cumsum([len(s) for s in scenes])[:-1].tolist())
    return np.concatenate(scenes), cuts


def blurred(frames: np.ndarray, *, sigma: float = 3.0) -> np.ndarray:
    """Gaussian-blur every frame (sigma in pixels): an out-of-focus copy."""
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])


def darkened(frames: np.ndarray, *, factor: float = 0.08) -> np.ndarray:
    """Scale brightness by ``factor``: an underexposed copy."""
    return np.clip(frames.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def shape_caption(color: str, shape: Shape, direction: Direction) -> str:
    """The caption of a :func:`moving_shapes` video, e.g. ``"a red circle moving left"``."""
    return f"a {color} {shape} moving {direction}"


def moving_shapes(
    color: str = "red",
    shape: Shape = "circle",
    direction: Direction = "left",
    *,
    num_frames: int = 48,
    height: int = 96,
    width: int = 128,
    fps: float = 24.0,
    speed: float = 0.5,
    size: float = 0.3,
    seed: int = 0,
) -> np.ndarray:
    """A coloured shape crossing a static textured background; see :func:`shape_caption`.

    ``speed`` is in frame widths (or heights, for up/down) per second; ``size`` is the shape's
    diameter as a fraction of the frame height.
    """
    if color not in COLORS:
        raise ValueError(f"color={color!r}: choose one of {sorted(COLORS)}")
    if shape not in ("circle", "square", "triangle"):
        raise ValueError(f"shape={shape!r}: choose circle, square or triangle")
    if direction not in ("left", "right", "up", "down"):
        raise ValueError(f"direction={direction!r}: choose left, right, up or down")
    rng = np.random.default_rng(seed + 1)
    bg = (
        texture(height, width, seed=seed).astype(np.float32) * 0.7 + 30 + rng.normal(0, 3, (height, width, 3))
    )
    bg = np.clip(bg, 0, 255).astype(np.uint8)  # dimmed so the shape stands out; grain keeps it sharp
    rgb = COLORS[color]
    r = size * height / 2
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        d = speed * t / fps  # frame widths (heights) travelled so far
        cx, cy = width / 2, height / 2
        if direction == "left":
            cx = width * (0.75 - d)
        elif direction == "right":
            cx = width * (0.25 + d)
        elif direction == "up":
            cy = height * (0.75 - d)
        else:
            cy = height * (0.25 + d)
        frame = bg.copy()
        _draw_shape(frame, shape, cx=cx, cy=cy, r=r, rgb=rgb)
        frames[t] = frame
    return frames


def _draw_shape(img: np.ndarray, shape: Shape, *, cx: float, cy: float, r: float, rgb: tuple) -> None:
    sh = 4  # NOTE: sub-pixel positions via cv2's fixed-point shift (16 steps per pixel)
    f = 1 << sh
    if shape == "circle":
        cv2.circle(img, (int(cx * f), int(cy * f)), int(r * f), rgb, -1, cv2.LINE_AA, sh)
        return
    if shape == "square":
        pts = np.array([[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r]])
    else:
        pts = np.array([[cx, cy - r], [cx + r * 0.95, cy + r * 0.8], [cx - r * 0.95, cy + r * 0.8]])
    cv2.fillPoly(img, [(pts * f).astype(np.int32)], rgb, cv2.LINE_AA, sh)


def write_video(path: str | Path, frames: np.ndarray, fps: float, *, crf: int = 18) -> Path:
    """Write frames as H.264 mp4 (atomically) and return the path."""
    write_mp4(path, frames, fps, crf=crf)
    return Path(path)
