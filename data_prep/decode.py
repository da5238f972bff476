"""Frame-accurate analysis decoding: every frame, in ffmpeg's numbering, at a low resolution.

Decoding is the physical cost of curation, so a video is decoded once for analysis, every
frame, resized while decoding (FFmpeg's scaler, area filter) to a short side of
``DecodeConfig.short_side`` pixels. Scene detection, motion, quality and dedup all read these
frames, as a stream (:class:`AnalysisStream`): no stage holds the whole video.

**Frame numbering.** Frame *i* is the *i*-th frame FFmpeg's decoder outputs, in presentation
order, with the display matrix applied (:class:`vdiff.io.video.FrameReader`, PyAV): the frame
``ffmpeg -i FILE -fps_mode passthrough`` writes as its frame *i*. That holds for MPEG-TS and
MPEG-PS streams that start at a nonzero timestamp, MP4 edit lists and B-frames, VP9/AV1 in
Matroska, and variable-frame-rate files (numbered by decoded frame; the frame rate used for
times is the stream's average rate). The clips are encoded from the same decoder, so the
manifest's ``start_frame``/``end_frame`` are the frames in the clip.

Why not decord: on MPEG-TS/PS files with a start offset decord's frame *i* was not the
container's frame *i* (offsets of several frames, repeated frames at the end, scrambled batch
order), it ignores the display matrix, and it fails on VP9 in Matroska; with one shared
scaler context PyAV decodes as fast (docs/benchmarks.md, "Analysis decoding").

Bad inputs raise :class:`vdiff.io.video.VideoError` with the file and the reason: missing,
empty, not a video, no frames, a rotation that is not a multiple of 90 degrees. A stream that
breaks part-way (corrupt packets, a cut download whose index is at the front) yields the
frames before the break (``truncated`` is then True). A cut mp4 whose index (moov) was at the
end cannot be opened at all and raises.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdiff.io.video import FrameReader, StreamInfo, VideoError, VideoMeta


@dataclass
class DecodeConfig:
    """How videos are decoded for analysis."""

    short_side: int = 128
    """analysis resolution: the shorter side in pixels (aspect kept; never upscaled)"""
    num_threads: int = 1
    """decoder threads per video (0 = FFmpeg's choice); keep 1 when workers run in parallel"""
    window_frames: int = 512
    """scene detection runs on windows of this many analysis frames (plus context at the edges)"""
    max_memory_mb: int = 1024
    """most memory the analysis frames held for one scene's clips may take; a longer scene
    (clips.chunking=even) has its clips scored in a second decoding pass instead"""

    def validate(self) -> None:
        if self.short_side < 16:
            raise ValueError(f"decode.short_side={self.short_side}: must be at least 16 pixels")
        if self.window_frames < 64:
            raise ValueError(f"decode.window_frames={self.window_frames}: must be at least 64")
        if self.max_memory_mb < 1:
            raise ValueError(f"decode.max_memory_mb={self.max_memory_mb}: must be at least 1")


def analysis_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the shorter side at ``short_side`` (never upscaled), both even, aspect kept."""
    s = min(width, height)
    if s <= short_side:
        return width - width % 2, height - height % 2
    scale = short_side / s
    w = max(2, round(width * scale / 2) * 2)
    h = max(2, round(height * scale / 2) * 2)
    return w, h


class AnalysisStream:
    """Every frame of a video at the analysis resolution, decoded as it is iterated.

    Use as a context manager. :attr:`meta` holds the display size and fps from the start;
    after iteration, :attr:`count` is the number of frames and :attr:`truncated` says whether
    decoding stopped at a damaged packet. :attr:`seconds` is the time spent decoding.
    """

    def __init__(self, path: str | Path, cfg: DecodeConfig | None = None):
        self.cfg = cfg or DecodeConfig()
        self.path = Path(path)
        self._reader = FrameReader(self.path, threads=self.cfg.num_threads)
        self.info: StreamInfo = self._reader.info
        self.size = analysis_size(self.info.width, self.info.height, self.cfg.short_side)
        """(w, h) of the analysis frames"""
        self.seconds = 0.0

    @property
    def meta(self) -> VideoMeta:
        """Display size and fps; ``num_frames`` is the frames decoded so far (all, once iterated)."""
        i = self.info
        return VideoMeta(num_frames=self._reader.count, fps=i.fps, width=i.width, height=i.height)

    @property
    def count(self) -> int:
        return self._reader.count

    @property
    def truncated(self) -> bool:
        """True when decoding stopped at an undecodable packet or before the frames the container states."""
        promised = self.info.promised_frames
        return self._reader.error is not None or (promised > 0 and self._reader.count < promised)

    @property
    def frame_bytes(self) -> int:
        return self.size[0] * self.size[1] * 3

    def __iter__(self) -> Iterator[np.ndarray]:
        frames = self._reader.frames(self.size, interpolation="AREA")
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)  # (h, w, 3) uint8 RGB
            self.seconds += time.perf_counter() - t0
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> AnalysisStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class DecodedVideo:
    """A video's metadata and all its frames at the analysis resolution (short videos, tests)."""

    path: Path
    meta: VideoMeta
    """display width/height and fps; num_frames = frames actually decoded"""
    frames: np.ndarray
    """(T, h, w, 3) uint8 RGB, every frame, upright, resized to the analysis resolution"""
    truncated: bool = False
    """True when the container promised more frames than could be decoded"""

    @property
    def fps(self) -> float:
        return self.meta.fps


def decode_for_analysis(path: str | Path, cfg: DecodeConfig | None = None) -> DecodedVideo:
    """All frames of ``path`` at the analysis resolution in one array; raise :class:`VideoError`.

    Curation streams instead (:class:`AnalysisStream`); this holds the whole video, so it
    refuses one whose frames would take more than ``decode.max_memory_mb``.
    """
    cfg = cfg or DecodeConfig()
    with AnalysisStream(path, cfg) as stream:
        limit = cfg.max_memory_mb * 2**20 // stream.frame_bytes
        need = stream.info.promised_frames
        frames: list[np.ndarray] = []
        for frame in stream:
            frames.append(frame)
            need = max(need, len(frames))
            if need > limit:
                w, h = stream.size
                raise VideoError(
                    f"{stream.path}: {need} frames at {w}x{h} need {need * stream.frame_bytes / 2**20:.0f} "
                    f"MiB, over decode.max_memory_mb={cfg.max_memory_mb}; stream the video with "
                    "AnalysisStream or raise the limit"
                )
        return DecodedVideo(
            path=stream.path, meta=stream.meta, frames=np.stack(frames), truncated=stream.truncated
        )
