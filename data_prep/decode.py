"""One decode pass per video at a low analysis resolution, shared by every analysis stage.

Decoding is the physical cost of curation, so a video is decoded once, every native frame,
resized while decoding (decord/FFmpeg's scaler) to a short side of ``DecodeConfig.short_side``
pixels. Scene detection, motion, quality and dedup all read these frames.

Bad inputs raise :class:`vdiff.io.video.VideoError` with the file and the reason: missing,
empty, not a video, no frames. A truncated file yields the frames that could be decoded
(``DecodedVideo.truncated`` is then True and ``meta.num_frames`` is the decoded count).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdiff.io.video import VideoError, VideoMeta, open_reader


@dataclass
class DecodeConfig:
    """How videos are decoded for analysis."""

    short_side: int = 128
    """analysis resolution: the shorter side in pixels (aspect kept; never upscaled)"""
    num_threads: int = 1
    """decoder threads per video (0 = FFmpeg's choice); keep 1 when workers run in parallel"""
    chunk_frames: int = 128
    """frames fetched per decoder call (bounds the decoder's temporary memory)"""

    def validate(self) -> None:
        if self.short_side < 16:
            raise ValueError(f"decode.short_side={self.short_side}: must be at least 16 pixels")
        if self.chunk_frames < 1:
            raise ValueError(f"decode.chunk_frames={self.chunk_frames}: must be at least 1")


@dataclass
class DecodedVideo:
    """A video's metadata and all its frames at the analysis resolution."""

    path: Path
    meta: VideoMeta
    """source metadata (native width/height and fps; num_frames = frames actually decoded)"""
    frames: np.ndarray
    """(T, h, w, 3) uint8 RGB, every native frame, resized to the analysis resolution"""
    truncated: bool = False
    """True when the container promised more frames than could be decoded"""

    @property
    def fps(self) -> float:
        return self.meta.fps


def analysis_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the shorter side at ``short_side`` (never upscaled), both even, aspect kept."""
    s = min(width, height)
    if s <= short_side:
        return width - width % 2, height - height % 2
    scale = short_side / s
    w = max(2, round(width * scale / 2) * 2)
    h = max(2, round(height * scale / 2) * 2)
    return w, h


def _resize_all(frames: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])


def decode_for_analysis(path: str | Path, cfg: DecodeConfig | None = None) -> DecodedVideo:
    """Decode every frame of ``path`` at the analysis resolution; raise :class:`VideoError`."""
    import decord

    cfg = cfg or DecodeConfig()
    path = Path(path)
    probe_reader = open_reader(path)  # raises VideoError for missing / empty / non-video files
    n_promised = len(probe_reader)
    if n_promised == 0:
        raise VideoError(f"{path}: the video stream holds no frames")
    try:
        first = probe_reader[0].asnumpy()
    except Exception as e:
        raise VideoError(f"{path}: the first frame cannot be decoded ({type(e).__name__})") from e
    src_h, src_w = first.shape[:2]
    fps = float(probe_reader.get_avg_fps())
    if not fps > 0:
        raise VideoError(f"{path}: the container reports no frame rate (fps={fps})")
    del probe_reader
    w, h = analysis_size(src_w, src_h, cfg.short_side)
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=w, height=h, num_threads=cfg.num_threads)
        resize_after = False
    except Exception as e:
        raise VideoError(f"{path}: not a readable video ({type(e).__name__})") from e

    chunks: list[np.ndarray] = []
    truncated = False
    for start in range(0, n_promised, cfg.chunk_frames):
        idx = list(range(start, min(start + cfg.chunk_frames, n_promised)))
        try:
            batch = vr.get_batch(idx).asnumpy()  # (t, h, w, 3)
        except Exception as e:
            if "must exactly match" in str(e) and not resize_after:
                # NOTE: decord's scaler mis-sizes some targets; decode at full size and resize
                # with OpenCV instead (same fallback as vdiff.io.video.read_frames).
                vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=cfg.num_threads)
                resize_after = True
                batch = None
            else:
                batch = None
            if batch is None:
                batch, truncated = _decode_one_by_one(vr, idx)
        if resize_after and len(batch):
            batch = _resize_all(batch, w, h)
        if len(batch):
            chunks.append(batch)
        if truncated:
            break
    frames = np.concatenate(chunks) if chunks else np.zeros((0, h, w, 3), np.uint8)
    if len(frames) == 0:
        raise VideoError(f"{path}: no frame could be decoded (corrupt or truncated stream)")
    meta = VideoMeta(num_frames=len(frames), fps=fps, width=int(src_w), height=int(src_h))
    return DecodedVideo(path=path, meta=meta, frames=frames, truncated=truncated)


def _decode_one_by_one(vr, idx: list[int]) -> tuple[np.ndarray, bool]:
    """Decode ``idx`` frame by frame, stopping at the first failure (a truncated stream)."""
    out = []
    for i in idx:
        try:
            out.append(vr[i].asnumpy())
        except Exception:
            return (np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)), True
    return np.stack(out), False
