"""Synthetic test and demo videos with known content: pans, whip pans, hand-held shake, a person
walking past, flashes, cuts, blur, dark.

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


def _render_window(
    world: np.ndarray, *, x0: float, y0: float, height: int, width: int, angle: float = 0.0
) -> np.ndarray:
    """Sample the world through a window of height ``_WORLD_H`` texture pixels at (x0, y0).

    ``angle`` (degrees) rolls the window about its centre.
    """
    scale = _WORLD_H / height  # texture pixels per output pixel
    if angle == 0.0:
        m = np.array([[scale, 0, x0], [0, scale, y0]], np.float32)  # output -> world coordinates
    else:
        c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        rot = scale * np.array([[c, -s], [s, c]])  # (2, 2)
        centre = np.array([(width - 1) / 2, (height - 1) / 2])
        offset = np.array([x0, y0]) + scale * centre - rot @ centre  # the centre maps as at angle 0
        m = np.hstack([rot, offset[:, None]]).astype(np.float32)  # (2, 3) output -> world
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
    shutter: float = 0.0,
    ease: float = 0.0,
) -> np.ndarray:
    """A camera panning/tilting over a textured world at ``speed`` frame widths per second.

    ``direction`` is where the content moves on screen (``"left"``: the camera pans right).
    ``noise`` adds Gaussian sensor noise of that standard deviation (grey levels). ``shake``
    jolts the camera every frame by an independent random offset of that standard deviation,
    in frame widths (a violent, frame-rate dependent shake; :func:`handheld` is the realistic
    one). ``shutter`` is the fraction of the frame interval the shutter stays open (0.5: a
    180-degree shutter): each frame averages sub-frame renders over it (motion blur). ``ease``
    (seconds) starts the pan from rest and brings it back to rest: the speed rises over the
    first ``ease`` seconds and falls over the last (raised-cosine ramps).
    """
    aspect = width / height
    world_w_frame = _WORLD_H * aspect  # a frame's width in texture pixels
    travel = abs(speed) * world_w_frame * num_frames / fps  # texture pixels moved in total
    horizontal = direction in ("left", "right")
    margin = int(4 * shake * world_w_frame + shutter * abs(speed) * world_w_frame / fps) + 8
    ww = int(world_w_frame + (travel if horizontal else 0)) + 2 * margin
    wh = int(_WORLD_H + (0 if horizontal else travel)) + 2 * margin
    world = texture(wh, ww, seed=seed)
    rng = np.random.default_rng(seed + 1)
    jolts = np.clip(rng.normal(0, shake * world_w_frame, (num_frames, 2)), -margin + 1, margin - 1)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    subs = _shutter_offsets(shutter, abs(speed) * width / fps)  # (S,) in frame intervals
    for t in range(num_frames):
        renders = []
        for u in subs:
            d = abs(speed) * world_w_frame * _eased((t + u) / fps, num_frames / fps, ease)
            x0 = margin + jolts[t, 0] + {"left": d, "right": travel - d}.get(direction, 0.0)
            y0 = margin + jolts[t, 1] + {"up": d, "down": travel - d}.get(direction, 0.0)
            renders.append(_render_window(world, x0=x0, y0=y0, height=height, width=width))
        frame = renders[0] if len(renders) == 1 else _average(renders)
        if noise > 0:
            frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
        frames[t] = frame
    return frames


def _eased(t: float, duration: float, ease: float) -> float:
    """Seconds of full-speed travel done by ``t`` when the speed ramps up and down over ``ease`` s."""
    if ease <= 0:
        return t
    e = min(ease, duration / 2)

    def ramp(x: float) -> float:  # integral of 0.5 (1 - cos(pi x / e)) from 0 to x, x in [0, e]
        x = min(max(x, 0.0), e)
        return 0.5 * (x - e / np.pi * np.sin(np.pi * x / e))

    flat = min(max(t, e), duration - e) - e  # seconds at full speed so far
    return ramp(t) + flat + (ramp(e) - ramp(duration - t) if t > duration - e else 0.0)


def _shutter_offsets(shutter: float, pixels_per_frame: float) -> np.ndarray:
    """Sub-frame render times (in frame intervals, centred on 0) covering an open ``shutter``.

    About one render per output pixel of travel while the shutter is open, so the blur is smooth.
    """
    if shutter <= 0:
        return np.zeros(1)
    n = int(np.clip(np.ceil(shutter * pixels_per_frame) + 1, 2, 48))
    return (np.arange(n) / (n - 1) - 0.5) * shutter


def _average(renders: list[np.ndarray]) -> np.ndarray:
    """Rounded mean of equally sized uint8 renders (a frame exposed over the sub-frame times)."""
    mean = np.stack(renders).astype(np.float32).mean(axis=0)  # (S, H, W, 3) -> (H, W, 3)
    return np.round(mean).astype(np.uint8)


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


def _band_limited(rng: np.random.Generator, rms: float, *, low: float, high: float) -> np.ndarray:
    """(3, 16) rows frequency (Hz), amplitude, phase of a random sum of sines with RMS ``rms``.

    [low, high] is cut into 16 equal bands on a log scale, one sine of random frequency and
    phase in each; amplitudes fall as 1/f, so every band adds about the same speed: a hand's
    sway (about 1 Hz) moves the camera furthest, tremor (5-10 Hz) least.
    """
    edges = np.geomspace(low, high, 17)  # (K + 1,)
    f = np.exp(rng.uniform(np.log(edges[:-1]), np.log(edges[1:])))  # (K,) Hz
    a = 1.0 / f
    a *= rms / np.sqrt((a**2).sum() / 2)  # RMS of a sum of sines with independent phases
    return np.stack([f, a, rng.uniform(0, 2 * np.pi, len(f))])


def _sines(components: np.ndarray, t: float) -> float:
    f, a, phase = components
    return float((a * np.sin(2 * np.pi * f * t + phase)).sum())


def handheld(
    *,
    amplitude: float = 0.01,
    roll: float | None = None,
    speed: float = 0.0,
    direction: Direction = "left",
    num_frames: int = 48,
    height: int = 96,
    width: int = 128,
    fps: float = 24.0,
    seed: int = 0,
    noise: float = 2.0,
    shutter: float = 0.0,
    band: tuple[float, float] = (0.5, 8.0),
) -> np.ndarray:
    """A hand-held camera: smooth random shake, optionally on top of a pan at ``speed``.

    The camera offset is a band-limited random signal (frequencies in ``band``, Hz) in
    continuous time, so the same seed shakes the same way at any frame rate and resolution:
    ``amplitude`` is its RMS in frame widths, in x and in y (0.003 steady hands, 0.01 a
    hand-held shot, 0.02-0.03 walking), ``roll`` the RMS of the camera's roll in degrees
    (default ``20 * amplitude``). ``speed``, ``direction``, ``noise`` and ``shutter`` are as
    in :func:`camera_move`.
    """
    roll = 20 * amplitude if roll is None else roll
    rng = np.random.default_rng(seed + 2)
    comps = [_band_limited(rng, r, low=band[0], high=band[1]) for r in (amplitude, amplitude, roll)]
    aspect = width / height
    world_w_frame = _WORLD_H * aspect  # a frame's width in texture pixels
    travel = abs(speed) * world_w_frame * num_frames / fps  # texture pixels moved in total
    horizontal = direction in ("left", "right")
    reach = comps[0][1].sum() * world_w_frame  # the largest possible offset, texture pixels
    corner = np.radians(comps[2][1].sum()) * np.hypot(world_w_frame, _WORLD_H) / 2  # roll at a corner
    margin = int(reach + corner + shutter * abs(speed) * world_w_frame / fps) + 8
    ww = int(world_w_frame + (travel if horizontal else 0)) + 2 * margin
    wh = int(_WORLD_H + (0 if horizontal else travel)) + 2 * margin
    world = texture(wh, ww, seed=seed)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    subs = _shutter_offsets(shutter, (abs(speed) + 6 * amplitude * band[1]) * width / fps)
    for t in range(num_frames):
        renders = []
        for u in subs:
            secs = (t + u) / fps
            d = abs(speed) * world_w_frame * secs
            x0 = margin + _sines(comps[0], secs) * world_w_frame
            y0 = margin + _sines(comps[1], secs) * world_w_frame
            x0 += {"left": d, "right": travel - d}.get(direction, 0.0)
            y0 += {"up": d, "down": travel - d}.get(direction, 0.0)
            angle = _sines(comps[2], secs)
            renders.append(_render_window(world, x0=x0, y0=y0, height=height, width=width, angle=angle))
        frame = renders[0] if len(renders) == 1 else _average(renders)
        if noise > 0:
            frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
        frames[t] = frame
    return frames


def walking_subject(
    *,
    size: float = 0.5,
    speed: float = 0.3,
    direction: Literal["left", "right"] = "left",
    bob: float = 0.02,
    step_hz: float = 2.0,
    num_frames: int = 48,
    height: int = 96,
    width: int = 128,
    fps: float = 24.0,
    seed: int = 0,
    noise: float = 2.0,
) -> np.ndarray:
    """A locked-off camera watching a textured figure walk across the frame.

    ``size`` is the figure's height as a fraction of the frame height (1: a person near the
    camera; 1.5: passing right by the lens, cut by the frame and covering about half of it); it
    crosses at ``speed`` frame widths per second from 0.8 (or 0.2) of the width, bobbing up and
    down by ``bob`` frame heights at ``step_hz`` steps per second.
    """
    rng = np.random.default_rng(seed + 3)
    aspect = width / height
    world = texture(_WORLD_H, int(_WORLD_H * aspect) + 2, seed=seed)
    background = _render_window(world, x0=0.0, y0=0.0, height=height, width=width)
    sh, sw = int(_WORLD_H * size), int(_WORLD_H * size * 0.45)  # the figure in texture pixels
    sprite = (texture(sh, sw, seed=seed + 100) * 0.6).astype(np.uint8)  # darker than the scene
    mask = np.zeros((sh, sw), np.float32)
    cv2.ellipse(
        mask, (sw // 2, int(sh * 0.58)), (sw // 2 - 1, int(sh * 0.42)), 0, 0, 360, 1.0, -1, cv2.LINE_AA
    )
    cv2.circle(mask, (sw // 2, int(sh * 0.09)), int(sh * 0.09), 1.0, -1, cv2.LINE_AA)  # the head
    scale = _WORLD_H / height  # texture pixels per output pixel
    half_w = sw / scale / width / 2  # half the figure's width, frame widths
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        secs = t / fps
        x = (0.8 - speed * secs) if direction == "left" else (0.2 + speed * secs)  # centre, frame widths
        y = 1.0 - size + bob * np.sin(2 * np.pi * step_hz * secs)  # top, frame heights
        # output -> sprite coordinates: the sprite's top-left sits at (x - half_w, y) of the frame
        m = np.array([[scale, 0, -(x - half_w) * width * scale], [0, scale, -y * height * scale]], np.float32)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        fg = cv2.warpAffine(sprite, m, (width, height), flags=flags, borderMode=cv2.BORDER_CONSTANT)
        alpha = cv2.warpAffine(mask, m, (width, height), flags=flags, borderMode=cv2.BORDER_CONSTANT)
        frame = background * (1 - alpha[..., None]) + fg * alpha[..., None]  # (H, W, 3) float
        if noise > 0:
            frame = frame + rng.normal(0, noise, frame.shape)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


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
