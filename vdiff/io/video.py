"""Video reading and H.264 mp4 writing (PyAV/libx264), shared by every package.

:class:`FrameReader` is the frame-accurate reader: it decodes a file sequentially with PyAV
(FFmpeg's own demuxers and decoders) and yields every frame the decoder outputs, in
presentation order, with the display matrix applied (rotated upright, as ``ffmpeg -i F``
shows it). Frame *i* is ffmpeg's frame *i* (``ffmpeg -fps_mode passthrough``), whatever the
container's start timestamp, edit list or B-frame reordering. Curation numbers every frame
this way. :func:`read_frames` and :func:`probe` (decord, random access) remain for callers
that read vdiff's own clean mp4s (training, evaluation).
"""

from __future__ import annotations

import ctypes
import functools
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from vdiff.io.files import atomic_write_bytes


class VideoError(RuntimeError):
    """A file could not be opened or decoded as a video; the message names the file and why."""


@dataclass(frozen=True)
class VideoMeta:
    """What a container says about its video stream."""

    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0


@dataclass(frozen=True)
class StreamInfo:
    """What the container and the first decoded frame say about a video stream."""

    fps: float
    """average frame rate (frames per second)"""
    width: int
    """display width in pixels (after the display matrix's rotation)"""
    height: int
    """display height in pixels (after the display matrix's rotation)"""
    rotation: int
    """display-matrix rotation applied to every frame, degrees counterclockwise: 0, 90, 180 or 270"""
    promised_frames: int
    """frame count the container states (0 when it states none, e.g. MPEG-TS)"""
    codec: str
    """decoder name, e.g. h264"""
    container: str
    """demuxer name, e.g. mov,mp4,m4a,3gp,3g2,mj2"""


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0][:200]


def quarter_turns(rotation: float, path: Path | str = "") -> int:
    """Counterclockwise quarter turns (0-3) of a display-matrix rotation in degrees (a multiple of 90)."""
    k = round(rotation / 90.0)
    if abs(rotation - 90.0 * k) > 0.5:
        raise VideoError(
            f"{path}: display matrix rotates by {rotation:.1f} degrees, not a multiple of 90; "
            "re-encode it upright first (ffmpeg -i IN -vf rotate=... OUT)"
        )
    return k % 4


class FrameReader:
    """Sequential, frame-accurate decoding of one video with PyAV; use as a context manager.

    ``frames()`` yields upright uint8 RGB frames, optionally resized; ``av_frames()`` yields the
    decoder's frames as they are (with :attr:`turns` still to apply). Decoding stops quietly at
    the first undecodable packet: :attr:`error` then says why, and the frames before it stand.
    """

    def __init__(self, path: str | Path, *, threads: int = 1):
        import av

        self.path = Path(path)
        _check_file(self.path)
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError, ValueError) as e:
            reason = f"{type(e).__name__}: {_first_line(e)}"
            raise VideoError(f"{self.path}: not a readable video ({reason})") from e
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(f"{self.path}: not a readable video (no video stream)")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        self._stream.codec_context.thread_count = threads
        self.error: str | None = None
        """why decoding stopped before the end of the stream, or None"""
        self.count = 0
        """frames yielded so far"""
        self._decoder = self._decode()
        self._first = next(self._decoder, None)
        if self._first is None:
            self.close()
            why = f": {self.error}" if self.error else ""
            raise VideoError(f"{self.path}: no frame could be decoded{why}")
        self.turns = quarter_turns(self._first.rotation or 0.0, self.path)
        """counterclockwise quarter turns that make the decoded frames upright"""
        self.info = self._info()

    def _info(self) -> StreamInfo:
        s, f = self._stream, self._first
        rate = s.average_rate or s.guessed_rate or s.base_rate
        fps = float(rate) if rate else 0.0
        if not fps > 0:
            raise VideoError(f"{self.path}: the container reports no frame rate")
        w, h = (f.height, f.width) if self.turns % 2 else (f.width, f.height)
        return StreamInfo(
            fps=fps,
            width=int(w),
            height=int(h),
            rotation=90 * self.turns,
            promised_frames=int(s.frames or 0),
            codec=str(s.codec_context.name),
            container=str(self._container.format.name),
        )

    def _decode(self):  # -> Iterator[av.VideoFrame]
        import av

        try:
            for packet in self._container.demux(self._stream):
                yield from packet.decode()
        except (av.FFmpegError, OSError) as e:
            # NOTE: a corrupt or cut stream: keep the frames before the break (deterministic).
            self.error = f"{type(e).__name__}: {_first_line(e)}"

    def av_frames(self):  # -> Iterator[av.VideoFrame]
        """Every decoded frame in presentation order, not yet rotated (see :attr:`turns`)."""
        if self._first is not None:
            first, self._first = self._first, None
            self.count += 1
            yield first
        for frame in self._decoder:
            self.count += 1
            yield frame

    def frames(
        self, size: tuple[int, int] | None = None, *, interpolation: str = "AREA"
    ) -> Iterator[np.ndarray]:
        """Upright (H, W, 3) uint8 RGB frames; ``size`` = display (width, height) to resize to."""
        from av.video.reformatter import VideoReformatter

        # NOTE: one reformatter for the whole stream reuses FFmpeg's scaler context; a fresh
        # one per frame (VideoFrame.to_ndarray(width=...)) made decoding 1.6-2x slower.
        scaler = VideoReformatter()
        w, h = size or (self.info.width, self.info.height)
        if self.turns % 2:
            w, h = h, w  # resize before turning
        for frame in self.av_frames():
            rgb = scaler.reformat(frame, width=w, height=h, format="rgb24", interpolation=interpolation)
            yield upright(rgb.to_ndarray(), self.turns)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def upright(frame: np.ndarray, turns: int) -> np.ndarray:
    """``frame`` (H, W, C) turned ``turns`` quarter turns counterclockwise (contiguous copy if turned)."""
    return np.ascontiguousarray(np.rot90(frame, turns)) if turns % 4 else frame


def open_reader(path: str | Path, *, width: int = -1, height: int = -1):  # -> decord.VideoReader
    """Open ``path`` with decord (optionally resizing while decoding); raise :class:`VideoError`."""
    import decord

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    except Exception as e:  # decord raises its own DECORDError and RuntimeError
        reason = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        raise VideoError(f"{path}: not a readable video ({reason})") from e


def probe(path: str | Path) -> VideoMeta:
    """Frame count, fps and size of a video; raise :class:`VideoError` when it has no frames."""
    vr = open_reader(path)
    n = len(vr)
    if n == 0:
        raise VideoError(f"{path}: the video stream holds no frames")
    h, w = vr[0].shape[:2]
    return VideoMeta(num_frames=n, fps=float(vr.get_avg_fps()), width=int(w), height=int(h))


def read_frames(
    path: str | Path,
    indices: list[int] | np.ndarray | None = None,
    *,
    width: int = -1,
    height: int = -1,
) -> np.ndarray:
    """Decode frames as uint8 RGB, shape (T, H, W, 3); all frames when ``indices`` is None."""
    vr = open_reader(path, width=width, height=height)
    idx = np.arange(len(vr)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(idx) == 0:
        return np.zeros((0, max(height, 0), max(width, 0), 3), np.uint8)
    try:
        return vr.get_batch(idx.tolist()).asnumpy()  # (T, H, W, 3)
    except Exception as e:
        if "must exactly match" in str(e):
            # NOTE: decord's frame copy mis-sizes some widths (e.g. 8, 24, 48 px, at full size too);
            # decode those files with PyAV instead and resize with OpenCV where asked.
            return _read_frames_pyav(path, idx, width=width, height=height)
        raise VideoError(f"{path}: decoding failed ({type(e).__name__}: {str(e).splitlines()[0]})") from e


def _read_frames_pyav(path: str | Path, idx: np.ndarray, *, width: int, height: int) -> np.ndarray:
    """Decode frames ``idx`` with PyAV (all frames in order), optionally resized; (T, H, W, 3)."""
    import av
    import cv2

    wanted = set(idx.tolist())
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= idx.max():
                    break
    except Exception as e:
        raise VideoError(f"{path}: decoding failed ({type(e).__name__}: {e})") from e
    missing = wanted - got.keys()
    if missing:
        raise VideoError(f"{path}: frames {sorted(missing)[:5]} could not be decoded")
    frames = [got[i] for i in idx.tolist()]
    if width > 0 or height > 0:
        h0, w0 = frames[0].shape[:2]
        size = (width if width > 0 else w0, height if height > 0 else h0)
        frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
    return np.stack(frames)  # (T, H, W, 3)


def encoder_threads(threads: int = 0) -> int:
    """libx264 threads to use: ``threads``, or one per CPU core this process may run on for 0."""
    if threads > 0:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_encoder_threads(stream, threads: int = 0) -> None:  # stream: av.VideoStream
    """Frame-threaded libx264 with :func:`encoder_threads` threads.

    NOTE: PyAV's default (thread_count 0) encodes on one thread: a long clip then keeps one
    core busy while the others idle (measured: 120 frames 768x576, 3.25 s -> 2.18 s wall on 2
    cores, same CPU time). x264's bytes depend on the thread count (see :func:`x264_options`).
    """
    stream.codec_context.thread_count = encoder_threads(threads)
    stream.codec_context.thread_type = "FRAME"


X264_CPU_AVX512 = 1 << 16
"""``X264_CPU_AVX512`` of x264.h: libx264's AVX-512 routines."""


def _loaded_library(fragment: str) -> str | None:
    """Path of a shared library this process has mapped whose file name contains ``fragment``."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fragment in Path(fields[5].strip()).name:
                    return fields[5].strip()
    except OSError:
        return None
    return None


@functools.cache
def x264_cpu_flags() -> int | None:
    """The CPU flags libx264 detects (``x264_cpu_detect()`` of the libx264 PyAV loaded), or None.

    None when that library cannot be reached (no ``/proc``, or libx264 linked into libavcodec).
    """
    import av  # noqa: F401  (loads libavcodec and the libx264 it links)

    path = _loaded_library("libx264")
    if path is None:
        return None
    try:
        detect = ctypes.CDLL(path).x264_cpu_detect
    except (OSError, AttributeError):
        return None
    detect.restype, detect.argtypes = ctypes.c_uint32, []
    return int(detect())


def x264_options(*, crf: int, preset: str) -> dict[str, str]:
    """libx264 options for ``crf`` and ``preset`` that give the same bytes for the same frames.

    NOTE: with its AVX-512 routines on, libx264's output (core 165, PyAV 18's) depended on what
    the heap held before (memory it had not written): the same frames gave up to 7 different
    bitstreams in 8 encodes in one process, with one thread. Those routines are turned off here
    (``asm`` = the detected flags without AVX-512); the output then equals what the AVX2
    routines give, and encoding was no slower (docs/curation.md, Reproducible bytes). The bytes
    still depend on the thread count and on the instruction set class (SSE2-only and
    SSSE3-or-better CPUs differ).
    """
    options = {"crf": str(crf), "preset": preset}
    flags = x264_cpu_flags()
    if flags is not None and flags & X264_CPU_AVX512:
        options["x264-params"] = f"asm={flags & ~X264_CPU_AVX512}"
    return options


def encode_mp4(
    frames: np.ndarray, fps: float, *, crf: int = 18, preset: str = "veryfast", threads: int = 1
) -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames as H.264 (yuv420p) mp4 bytes.

    Odd widths and heights are cropped by one pixel (yuv420p needs even sizes). ``threads``:
    encoder threads (0 = one per CPU core). The same frames and arguments give the same bytes
    (:func:`x264_options`); x264's bytes depend on its thread count, so the default (1) writes
    the same file on every machine of one instruction set class (generated samples are hashed).
    """
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError("cannot encode a video with no frames")
    frames = frames[:, : h - h % 2, : w - w % 2]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = x264_options(crf=crf, preset=preset)
        set_encoder_threads(stream, threads)
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, *, crf: int = 18) -> None:
    """Write frames to ``path`` as H.264 mp4, atomically (temporary name, then rename)."""
    atomic_write_bytes(path, encode_mp4(frames, fps, crf=crf))
