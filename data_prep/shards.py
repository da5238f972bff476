"""Output clips and WebDataset tar shards.

Each kept clip is re-encoded from its source frames as H.264 mp4 and stored in
``shards/shard-NNNNNN.tar`` as ``<clip_id>.mp4``, ``<clip_id>.txt`` (the caption as UTF-8 text,
only when the clip has one) and ``<clip_id>.json`` (caption and metadata), in that order: the
plain WebDataset layout other video tools (video2dataset and the readers built for it) write
and read. Clips are spread evenly over at least ``min(min_shards, clips)`` shards of at most
``samples_per_shard`` clips, so a DataLoader with several workers gets a shard each even on a
small run. Shards are written under a temporary name and renamed when complete, and their
bytes depend only on their samples and these two numbers (fixed tar header fields), so
re-running a finalize step reproduces them exactly.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vdiff.config import ConfigError
from vdiff.io.files import atomic_open
from vdiff.io.outdir import remove_own_temps
from vdiff.io.video import FrameReader, VideoError, VideoMeta, set_encoder_threads, upright, x264_options

SHARD_PATTERN = "shard-{:06d}.tar"
SHARD_NAMES = r"shard-\d{6}\.tar"
"""Regular expression of the shard names :func:`write_shards` writes (and may remove)."""
PACKING_KEYS = ("samples_per_shard", "min_shards")
"""``OutputConfig`` keys that only change how clips are packed into shards (not the clips)"""


@dataclass
class OutputConfig:
    """How kept clips are encoded and packed."""

    fps: float = 0.0
    """frame rate of the output clips; 0 keeps the source rate (frames are picked, never blended)"""
    short_side: int = 0
    """resize output clips so their short side is this many pixels; 0 keeps the source size"""
    crf: int = 18
    """libx264 constant rate factor (lower = better quality, bigger files)"""
    preset: str = "veryfast"
    """libx264 preset"""
    threads: int = 0
    """libx264 threads per clip (frame threading); 0 = one per CPU core. Clip bytes depend on the
    thread count (with 0, on the core count): set a fixed count for the same bytes on other
    machines (docs/curation.md, Reproducible bytes)"""
    samples_per_shard: int = 100
    """most clips per WebDataset tar shard"""
    min_shards: int = 8
    """spread the clips evenly over at least this many shards (fewer only when there are fewer
    clips), so DataLoader workers (ranks x workers per rank) each get a shard on small runs"""

    def validate(self) -> None:
        if self.fps < 0 or self.short_side < 0:
            raise ConfigError("output.fps and output.short_side must be >= 0 (0 keeps the source value)")
        if self.samples_per_shard < 1:
            raise ConfigError(f"output.samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if self.min_shards < 1:
            raise ConfigError(f"output.min_shards must be >= 1, got {self.min_shards}")
        if self.threads < 0:
            raise ConfigError(f"output.threads must be >= 0 (0 = one per CPU core), got {self.threads}")
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"output.crf must be in [0, 51], got {self.crf}")


def output_geometry(meta: VideoMeta, cfg: OutputConfig) -> tuple[float, int, int]:
    """``(fps, width, height)`` of the clips cut from a video with ``meta`` (even sizes)."""
    fps = cfg.fps if cfg.fps > 0 else meta.fps
    w, h = meta.width, meta.height
    if cfg.short_side > 0 and min(w, h) != cfg.short_side:
        # NOTE: yuv420p needs even sizes: round to the nearest even size when resizing anyway.
        scale = cfg.short_side / min(w, h)
        return float(fps), 2 * max(1, round(w * scale / 2)), 2 * max(1, round(h * scale / 2))
    # NOTE: without a resize, encode_mp4 crops an odd pixel; report that size.
    return float(fps), w - w % 2, h - h % 2


def output_frame_indices(*, start: int, end: int, src_fps: float, out_fps: float) -> list[int]:
    """Source frame indices of an output clip covering ``[start, end)`` at ``out_fps``.

    Output frame k shows the source frame on screen at time ``k / out_fps`` after ``start``
    (nearest earlier frame), so the clip stays frame-accurate and nothing is interpolated.
    """
    if out_fps <= 0 or abs(out_fps - src_fps) < 1e-6:
        return list(range(start, end))
    duration = (end - start) / src_fps
    n = max(1, int(np.floor(duration * out_fps + 1e-6)))
    idx = [start + int(np.floor(k * src_fps / out_fps + 1e-6)) for k in range(n)]
    return [min(i, end - 1) for i in idx]


def _decode_in_order(reader: FrameReader, wanted: set[int]):  # -> Iterator[tuple[int, av.VideoFrame]]
    """Yield ``(index, frame)`` for the ``wanted`` frames of ``reader``, decoding once from the start.

    Indices are ffmpeg's frame numbers, as in the analysis pass (:class:`FrameReader`);
    decoding stops after the last wanted frame, or at a decoding error (the caller checks).
    """
    last = max(wanted)
    for i, frame in enumerate(reader.av_frames()):
        if i in wanted:
            yield i, frame
        if i >= last:
            return


def _upright_frame(frame, turns: int, *, even: bool):  # (av.VideoFrame) -> av.VideoFrame
    """``frame`` turned upright (display matrix) and, with ``even``, cropped to even sizes."""
    import av

    if turns == 0 and (not even or (frame.width % 2 == 0 and frame.height % 2 == 0)):
        return frame
    rgb = upright(frame.to_ndarray(format="rgb24"), turns)  # (H, W, 3)
    if even:
        h, w = rgb.shape[:2]
        rgb = rgb[: h - h % 2, : w - w % 2]
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")


class _ClipWriter:
    """An H.264 mp4 in memory fed decoded frames directly, with no RGB round trip.

    Same settings as :func:`vdiff.io.video.encode_mp4` (libx264, yuv420p, crf, preset); frames
    are converted (and resized) by one swscale call only when their size or format differ.
    """

    def __init__(self, *, fps: float, width: int, height: int, cfg: OutputConfig):
        import av

        self.buf = io.BytesIO()
        self.container = av.open(self.buf, mode="w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.time_base, self.n = 1 / rate, 0
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.options = x264_options(crf=cfg.crf, preset=cfg.preset)
        set_encoder_threads(self.stream, cfg.threads)

    def add(self, frame) -> None:
        w, h = self.stream.width, self.stream.height
        if (frame.width, frame.height, frame.format.name) != (w, h, "yuv420p"):
            interp = "AREA" if w < frame.width else "BILINEAR"
            frame = frame.reformat(width=w, height=h, format="yuv420p", interpolation=interp)
        # NOTE: re-time the frame as the n-th frame at the output rate (source timestamps and
        # time bases would otherwise leak into the clip).
        frame.pts, frame.time_base = self.n, self.time_base
        self.n += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> bytes:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        return self.buf.getvalue()


def encode_clips(
    source: Path, *, meta: VideoMeta, spans: Sequence[tuple[int, int]], cfg: OutputConfig
) -> list[tuple[bytes, int]]:
    """Re-encode each ``[start, end)`` span of ``source`` at full size; return (mp4, frames) per span.

    The source is decoded once, in order, up to the last frame needed, with the same
    frame-accurate reader as the analysis pass, so clip frame *k* is source frame
    ``start + k`` in ffmpeg's numbering (at the source fps). Frames are turned upright (display
    matrix) and go straight into their clip's encoder; only a turned frame or an odd size
    (cropped by a pixel when not resized) takes an RGB round trip. Spans must not overlap.
    """
    out_fps, w, h = output_geometry(meta, cfg)
    plans = [output_frame_indices(start=s, end=e, src_fps=meta.fps, out_fps=out_fps) for s, e in spans]
    owner = {i: k for k, plan in enumerate(plans) for i in plan}
    if len(owner) != sum(len(p) for p in plans):
        raise ValueError(f"encode_clips: spans {list(spans)} overlap")
    results: list[tuple[bytes, int] | None] = [None] * len(spans)
    if not owner:
        return []
    writers: dict[int, _ClipWriter] = {}
    counts = [0] * len(spans)
    with FrameReader(source) as reader:
        for i, frame in _decode_in_order(reader, set(owner)):
            k = owner[i]
            if k not in writers:
                writers[k] = _ClipWriter(fps=out_fps, width=w, height=h, cfg=cfg)
            writers[k].add(_upright_frame(frame, reader.turns, even=cfg.short_side == 0))
            counts[k] += 1
            if counts[k] == len(plans[k]):
                results[k] = (writers.pop(k).close(), counts[k])
        error = reader.error
    for writer in writers.values():
        writer.container.close()
    missing = [spans[k] for k, r in enumerate(results) if r is None]
    if missing:
        raise VideoError(
            f"{source}: frames of clips {missing[:3]} could not be decoded again for encoding "
            f"({error or 'the stream ended early'}); the file changed or decodes differently"
        )
    return results  # type: ignore[return-value]


def encode_clip(
    source: Path, *, meta: VideoMeta, start: int, end: int, cfg: OutputConfig
) -> tuple[bytes, int]:
    """Decode ``[start, end)`` of ``source`` at full size and re-encode it; return (mp4, frames)."""
    return encode_clips(source, meta=meta, spans=[(start, end)], cfg=cfg)[0]


@dataclass(frozen=True)
class ShardSample:
    """One kept clip to pack: its key, a loader for its mp4 bytes and its JSON metadata.

    A non-empty ``meta["caption"]`` is also written as the ``<clip_id>.txt`` member.
    """

    clip_id: str
    load_mp4: Callable[[], bytes]
    meta: dict[str, Any]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    # NOTE: fixed header fields (mtime 0, root owner, 0644) make shard bytes reproducible.
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: Sequence[ShardSample]) -> None:
    """Write one WebDataset tar shard atomically (temporary name, then rename).

    Per sample, in this order: ``<clip_id>.mp4``, ``<clip_id>.txt`` (UTF-8 caption, only when
    ``meta["caption"]`` is a non-empty string) and ``<clip_id>.json`` (``meta``, sorted keys).
    """
    with atomic_open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            _add(tar, f"{s.clip_id}.mp4", s.load_mp4())
            caption = s.meta.get("caption")
            if isinstance(caption, str) and caption.strip():
                _add(tar, f"{s.clip_id}.txt", caption.encode("utf-8"))
            _add(tar, f"{s.clip_id}.json", json.dumps(s.meta, sort_keys=True).encode("utf-8"))


def shard_sizes(num_samples: int, *, samples_per_shard: int, min_shards: int = 1) -> list[int]:
    """Clips per shard: ``max(ceil(n / samples_per_shard), min(min_shards, n))`` shards, sizes within one.

    The first ``n % shards`` shards hold one clip more than the others.
    """
    if samples_per_shard < 1 or min_shards < 1:
        raise ValueError(
            f"samples_per_shard ({samples_per_shard}) and min_shards ({min_shards}) must be >= 1"
        )
    if num_samples <= 0:
        return []
    shards = max(-(-num_samples // samples_per_shard), min(min_shards, num_samples))
    base, extra = divmod(num_samples, shards)
    return [base + (k < extra) for k in range(shards)]


def write_shards(
    samples: Sequence[ShardSample], out_dir: Path, *, samples_per_shard: int, min_shards: int = 1
) -> dict[str, str]:
    """Pack ``samples`` in the given order into ``out_dir/shard-NNNNNN.tar``; return clip_id -> shard name.

    The samples are spread as :func:`shard_sizes` says. Shards from an earlier run that the new
    packing does not produce (``shard-NNNNNN.tar`` names only) are removed, as are the temporary
    files a killed run left behind for those names; any other file in ``out_dir`` is kept.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_own_temps(out_dir, SHARD_NAMES)
    where: dict[str, str] = {}
    names = []
    sizes = shard_sizes(len(samples), samples_per_shard=samples_per_shard, min_shards=min_shards)
    i = 0
    for n, size in enumerate(sizes):
        chunk, i = samples[i : i + size], i + size
        name = SHARD_PATTERN.format(n)
        write_shard(out_dir / name, chunk)
        names.append(name)
        where.update({s.clip_id: name for s in chunk})
    for old in out_dir.glob("shard-*.tar"):
        if re.fullmatch(SHARD_NAMES, old.name) and old.name not in names:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
    return where


def sample_mp4_frames(data: bytes, n: int) -> np.ndarray:
    """``n`` evenly spaced frames of an mp4 held in memory, (n, H, W, 3) uint8 RGB.

    Only the picked frames are converted to RGB (the others are decoded and dropped).
    """
    import av

    from data_prep.captions import sample_indices

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        total = stream.frames
        if total <= 0:  # NOTE: no frame count in the container: decode once to count
            total = sum(1 for _ in container.decode(stream))
            container.seek(0)
        wanted = sample_indices(total, n)
        picked: dict[int, np.ndarray] = {}
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                picked[i] = frame.to_ndarray(format="rgb24")
            if i >= wanted[-1]:
                break
    if not picked:
        raise ValueError("the mp4 holds no decodable frame")
    last = picked[max(picked)]
    return np.stack([picked.get(i, last) for i in wanted])


def read_shard(path: Path) -> list[tuple[str, bytes]]:
    """``[(member name, bytes)]`` of a shard in order (for tests and reports)."""
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]  # type: ignore[union-attr]
