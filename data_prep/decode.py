"""One decode pass per video at a low analysis resolution, shared by every analysis stage.

Decoding is the physical cost of curation, so a video is decoded once, every native frame,
resized while decoding (decord/FFmpeg's scaler) to a short side of ``DecodeConfig.short_side``
pixels. Scene detection, motion, quality and dedup all read these frames.

Bad inputs raise :class:`vdiff.io.video.VideoError` with the file and the reason: missing,
empty, not a video, no frames. A stream that breaks part-way (corrupt packets, a cut download whose index
is at the front) yields the frames before the break, decoded sequentially with PyAV
(``DecodedVideo.truncated`` is then True and ``meta.num_frames`` is the decoded count). A cut
mp4 whose index (moov) was at the end cannot be opened at all and raises.
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
    max_memory_mb: int = 8192
    """refuse (VideoError) a video whose analysis frames would need more memory than this"""

    def validate(self) -> None:
        if self.short_side < 16:
            raise ValueError(f"decode.short_side={self.short_side}: must be at least 16 pixels")
        if self.chunk_frames < 1:
            raise ValueError(f"decode.chunk_frames={self.chunk_frames}: must be at least 1")
        if self.max_memory_mb < 1:
            raise ValueError(f"decode.max_memory_mb={self.max_memory_mb}: must be at least 1")


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
    fps = float(probe_reader.get_avg_fps())
    if not fps > 0:
        raise VideoError(f"{path}: the container reports no frame rate (fps={fps})")
    try:
        src_h, src_w = probe_reader[0].shape[:2]
        first_ok = True
    except Exception:
        # NOTE: decord reads ahead, so corruption a few frames in can fail even frame 0.
        src_w, src_h = _pyav_size(path)
        first_ok = False
    del probe_reader
    w, h = analysis_size(src_w, src_h, cfg.short_side)
    need_mb = n_promised * w * h * 3 / 2**20
    if need_mb > cfg.max_memory_mb:
        # NOTE: all analysis frames are held in memory; a clear error beats an OOM-killed worker.
        raise VideoError(
            f"{path}: {n_promised} frames at {w}x{h} need {need_mb:.0f} MiB for analysis, over "
            f"decode.max_memory_mb={cfg.max_memory_mb}; split the video or raise the limit"
        )

    if not first_ok:
        frames = _decode_prefix_pyav(path, width=w, height=h, limit=n_promised)
        return _result(path, frames, fps=fps, src=(src_w, src_h), promised=n_promised)

    def reader(resized: bool):
        size = {} if resized else {"width": w, "height": h}
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=cfg.num_threads, **size)

    try:
        vr = reader(resized=False)
    except Exception as e:
        reason = (str(e).splitlines() or [""])[0][:200]
        raise VideoError(f"{path}: not a readable video ({type(e).__name__}: {reason})") from e
    resize_after = False  # True once decord's scaler refused the size (decode full, resize here)
    chunks: list[np.ndarray] = []
    for start in range(0, n_promised, cfg.chunk_frames):
        idx = list(range(start, min(start + cfg.chunk_frames, n_promised)))
        try:
            batch = vr.get_batch(idx).asnumpy()  # (t, h, w, 3)
        except Exception as e:
            if "must exactly match" not in str(e) or resize_after:
                # NOTE: a corrupt or cut stream. decord's reader is unusable after a failed
                # batch and how far it gets depends on the batch size, so decode the readable
                # prefix sequentially with PyAV instead: deterministic, stops at the first
                # undecodable packet.
                frames = _decode_prefix_pyav(path, width=w, height=h, limit=n_promised)
                return _result(path, frames, fps=fps, src=(src_w, src_h), promised=n_promised)
            # NOTE: decord's scaler mis-sizes some targets; decode at full size and resize
            # with OpenCV instead (same fallback as vdiff.io.video.read_frames).
            resize_after = True
            vr = reader(resized=True)
            batch = vr.get_batch(idx).asnumpy()
        if resize_after:
            batch = _resize_all(batch, w, h)
        chunks.append(batch)
    frames = np.concatenate(chunks)
    return _result(path, frames, fps=fps, src=(src_w, src_h), promised=n_promised)


def _result(
    path: Path, frames: np.ndarray, *, fps: float, src: tuple[int, int], promised: int
) -> DecodedVideo:
    if len(frames) == 0:
        raise VideoError(f"{path}: no frame could be decoded (corrupt or truncated stream)")
    meta = VideoMeta(num_frames=len(frames), fps=fps, width=int(src[0]), height=int(src[1]))
    return DecodedVideo(path=path, meta=meta, frames=frames, truncated=len(frames) < promised)


def _pyav_size(path: Path) -> tuple[int, int]:
    """(width, height) of the video stream, from the container's codec parameters."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return int(stream.codec_context.width), int(stream.codec_context.height)
    except (av.FFmpegError, OSError, IndexError) as e:
        raise VideoError(f"{path}: the first frame cannot be decoded ({type(e).__name__})") from e


def _decode_prefix_pyav(path: Path, *, width: int, height: int, limit: int) -> np.ndarray:
    """Frames from the start of ``path`` up to the first decoding error, (T, h, w, 3) RGB."""
    import av

    out: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(container.streams.video[0]):
                out.append(frame.to_ndarray(width=width, height=height, format="rgb24"))
                if len(out) >= limit:
                    break
    except (av.FFmpegError, OSError, IndexError):
        pass  # NOTE: the end of the readable prefix; the caller reports truncated=True
    return np.stack(out) if out else np.zeros((0, height, width, 3), np.uint8)
