"""Output clips and WebDataset tar shards.

Each kept clip is re-encoded from its source frames as H.264 mp4 and stored in
``shards/shard-NNNNNN.tar`` as two members, ``<clip_id>.mp4`` and ``<clip_id>.json`` (caption
and metadata), which is the plain WebDataset layout. Shards are written under a temporary
name and renamed when complete, and their bytes depend only on their samples (fixed tar
header fields), so re-running a finalize step reproduces them exactly.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vdiff.config import ConfigError
from vdiff.io.files import atomic_open, remove_stale_temps
from vdiff.io.video import VideoMeta, encode_mp4, read_frames

SHARD_PATTERN = "shard-{:06d}.tar"


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
    samples_per_shard: int = 100
    """clips per WebDataset tar shard"""

    def validate(self) -> None:
        if self.fps < 0 or self.short_side < 0:
            raise ConfigError("output.fps and output.short_side must be >= 0 (0 keeps the source value)")
        if self.samples_per_shard < 1:
            raise ConfigError(f"output.samples_per_shard must be >= 1, got {self.samples_per_shard}")
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


def _decode_in_order(source: Path, wanted: set[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, (H, W, 3) uint8 RGB)`` for the ``wanted`` frames, decoding once from the start.

    Indices count frames in presentation order, as decord's do; only wanted frames are
    converted to RGB, and decoding stops after the last one.
    """
    import av

    last = max(wanted)
    try:
        with av.open(str(source)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    yield i, frame.to_ndarray(format="rgb24")
                if i >= last:
                    return
    except av.error.FFmpegError:
        return  # NOTE: the caller falls back to decord for the frames it did not get


def encode_clips(
    source: Path, *, meta: VideoMeta, spans: Sequence[tuple[int, int]], cfg: OutputConfig
) -> list[tuple[bytes, int]]:
    """Re-encode each ``[start, end)`` span of ``source`` at full size; return (mp4, frames) per span.

    The source is decoded once, in order (PyAV), up to the last frame needed, and each clip is
    encoded (:func:`vdiff.io.video.encode_mp4`) as soon as its frames are in, so memory holds
    one clip at a time. Spans must not overlap. A frame the sequential pass cannot produce
    (a damaged stream) is read with decord instead.
    """
    import cv2

    out_fps, w, h = output_geometry(meta, cfg)
    plans = [output_frame_indices(start=s, end=e, src_fps=meta.fps, out_fps=out_fps) for s, e in spans]
    order = sorted(range(len(spans)), key=lambda k: spans[k][0])
    results: list[tuple[bytes, int]] = [(b"", 0)] * len(spans)

    def finish(k: int, frames: dict[int, np.ndarray]) -> None:
        missing = [i for i in plans[k] if i not in frames]
        if missing:
            frames.update(zip(missing, read_frames(source, missing)))
        clip = np.stack([frames[i] for i in plans[k]])  # (T, H, W, 3)
        # NOTE: without short_side the odd pixel (if any) is cropped by encode_mp4, not resized.
        if cfg.short_side > 0 and (clip.shape[2], clip.shape[1]) != (w, h):
            interp = cv2.INTER_AREA if w < clip.shape[2] else cv2.INTER_LINEAR
            clip = np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in clip])
        results[k] = (encode_mp4(clip, out_fps, crf=cfg.crf, preset=cfg.preset), len(plans[k]))

    if not spans:
        return results
    buffer: dict[int, np.ndarray] = {}
    pos = 0
    for i, frame in _decode_in_order(source, {i for p in plans for i in p}):
        buffer[i] = frame
        while pos < len(order) and i >= plans[order[pos]][-1]:
            finish(order[pos], buffer)
            pos += 1
            nxt = plans[order[pos]][0] if pos < len(order) else i + 1
            buffer = {j: f for j, f in buffer.items() if j >= nxt}
    for k in order[pos:]:
        finish(k, buffer)
    return results


def encode_clip(
    source: Path, *, meta: VideoMeta, start: int, end: int, cfg: OutputConfig
) -> tuple[bytes, int]:
    """Decode ``[start, end)`` of ``source`` at full size and re-encode it; return (mp4, frames)."""
    return encode_clips(source, meta=meta, spans=[(start, end)], cfg=cfg)[0]


@dataclass(frozen=True)
class ShardSample:
    """One kept clip to pack: its key, a loader for its mp4 bytes and its JSON metadata."""

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
    """Write one WebDataset tar shard atomically (temporary name, then rename)."""
    with atomic_open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            _add(tar, f"{s.clip_id}.mp4", s.load_mp4())
            _add(tar, f"{s.clip_id}.json", json.dumps(s.meta, sort_keys=True).encode("utf-8"))


def write_shards(samples: Sequence[ShardSample], out_dir: Path, *, samples_per_shard: int) -> dict[str, str]:
    """Pack ``samples`` in the given order into ``out_dir/shard-NNNNNN.tar``; return clip_id -> shard name.

    Shards from an earlier run that the new packing does not produce are removed, as are
    temporary files a killed run left behind.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)
    where: dict[str, str] = {}
    names = []
    for n, i in enumerate(range(0, len(samples), samples_per_shard)):
        chunk = samples[i : i + samples_per_shard]
        name = SHARD_PATTERN.format(n)
        write_shard(out_dir / name, chunk)
        names.append(name)
        where.update({s.clip_id: name for s in chunk})
    for old in out_dir.glob("shard-*.tar"):
        if old.name not in names:
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
