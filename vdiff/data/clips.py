"""Decoding training clips from mp4 bytes: frame choice at a target fps, resize + crop, scaling."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from vdiff.io.video import VideoError, VideoMeta


def clip_frame_indices(
    src_frames: int, src_fps: float, *, num_frames: int, fps: float, start: int = 0
) -> list[int]:
    """Source frame indices for ``num_frames`` frames at ``fps`` starting at source frame ``start``.

    Frame i is the source frame nearest to time ``i / fps`` after ``start``; indices past the
    end repeat the last frame (short clips are padded, not rejected).
    """
    if src_frames <= 0 or src_fps <= 0 or fps <= 0:
        raise ValueError(f"cannot sample frames from {src_frames} frames at {src_fps} fps to {fps} fps")
    step = src_fps / fps
    return [min(src_frames - 1, start + math.floor(i * step + 0.5)) for i in range(num_frames)]


def max_start(src_frames: int, src_fps: float, *, num_frames: int, fps: float) -> int:
    """The latest start frame whose clip still fits inside the source (0 if none fits)."""
    return max(0, src_frames - frames_spanned(src_fps, num_frames=num_frames, fps=fps))


def frames_spanned(src_fps: float, *, num_frames: int, fps: float) -> int:
    """Source frames a clip of ``num_frames`` at ``fps`` spans, first to last (as sampled by
    :func:`clip_frame_indices`): a source with fewer frames pads the clip with its last one."""
    return math.floor((num_frames - 1) * src_fps / fps + 0.5) + 1


def probe_video_bytes(data: bytes, *, name: str = "<bytes>") -> VideoMeta:
    """Frame count, average fps and size of the first video stream of a file held in memory (PyAV).

    The count is the container's; when it states none (e.g. WebM, MPEG-TS), the stream is
    decoded once to count its frames. Raises :class:`VideoError` naming ``name`` when the bytes
    are not a decodable video, hold no frames or no frame rate.
    """
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise VideoError(f"{name}: holds no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            width, height = stream.codec_context.width, stream.codec_context.height
            count = stream.frames
            if count <= 0:  # NOTE: no frame count in the container: decode once to count
                count = sum(1 for _ in container.decode(stream))
            seconds = stream.duration * stream.time_base if stream.duration and stream.time_base else 0
    except av.error.FFmpegError as e:  # type: ignore[attr-defined]
        raise VideoError(f"{name}: not a decodable video ({e})") from e
    if count <= 0:
        raise VideoError(f"{name}: the video holds no frames")
    fps = float(rate) if rate else count / float(seconds) if seconds else 0.0
    if fps <= 0 or width <= 0 or height <= 0:
        raise VideoError(f"{name}: the container states no frame rate or size ({fps} fps, {width}x{height})")
    return VideoMeta(num_frames=int(count), fps=fps, width=int(width), height=int(height))


def decode_mp4_frames(data: bytes, indices: list[int], *, name: str = "<bytes>") -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed) as (T, H, W, 3) uint8 RGB."""
    import av

    wanted = set(indices)
    last = max(indices)
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
    except av.error.FFmpegError as e:  # type: ignore[attr-defined]
        raise VideoError(f"{name}: not a decodable video ({e})") from e
    if not frames:
        raise VideoError(f"{name}: the video holds no frames")
    # NOTE: a container may hold fewer frames than its metadata says; repeat the last one decoded.
    tail = frames[max(frames)]
    return np.stack([frames.get(i, tail) for i in indices])


def resize_crop(frames: torch.Tensor, *, height: int, width: int) -> torch.Tensor:
    """(T, 3, H, W) float -> (T, 3, height, width): scale to cover, then centre-crop."""
    h, w = frames.shape[-2:]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - height) // 2, (nw - width) // 2
    return frames[..., top : top + height, left : left + width]


def frames_to_video(frames: np.ndarray, *, height: int, width: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, height, width) float32 in [-1, 1]."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (T, 3, H, W)
    x = resize_crop(x, height=height, width=width).clamp(-1, 1)
    return x.permute(1, 0, 2, 3).contiguous()  # (3, T, H, W)
