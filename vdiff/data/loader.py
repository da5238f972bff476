"""Batches from curated (raw-clip) or cached (latent) WebDataset shards, per data-parallel rank.

Order: every epoch draws one permutation of all samples from ``seed`` and the epoch number;
global batch ``s`` is the slice ``[s·G, (s+1)·G)`` of it (G = per-rank batch × dp world) and
data-parallel rank ``r`` reads the r-th per-rank slice. So the samples of a global batch do
not depend on how many ranks share it, ranks of one sequence-parallel group (same dp rank)
read the same samples, and the position ``(epoch, step)`` is all a checkpoint needs to
resume. Iteration never ends; the last incomplete global batch of an epoch is dropped.

Aspect-ratio buckets (``data.buckets``, sizes ``HxW``): each clip goes to the bucket whose
aspect ratio is closest to its own (in log ratio), and an epoch's global batches are filled
in permutation order, one bucket at a time, so every batch holds clips of one size.

Raw samples from other tools: a sample is a video member (``.mp4``, ``.webm``, ...) with a
``.txt`` caption and/or a ``.json``. vdiff's shards state ``num_frames``, ``fps``, ``width`` and
``height`` in the json; a sample without ``num_frames``/``fps`` (video2dataset-style shards) is
probed instead (:func:`vdiff.data.clips.probe_video_bytes`, the container's frame count and
average rate, or one counting decode), and must then span the whole training clip. The caption
is the ``.txt`` member, else the json's ``caption``/``text``/``txt``/``prompt``. A sample that
cannot be used is an error naming the shard, the sample key and what to do.

Bad samples (``data.on_error``): ``raise`` stops at the first one. ``skip`` (the default) puts
in its place the next sample of the same bucket in shard order that can be read, so a batch
keeps its size, its position in the epoch and the other samples; which sample replaces which
depends only on the data, never on ranks, workers or the time of reading, so a resumed run
reads exactly the stream an uninterrupted one reads. The loader counts the skipped reads and
lists each bad sample once (shard, key, error) in its state
(:meth:`vdiff.data.shard_loader.ShardLoader.state_dict`), so a checkpoint carries them.
Samples whose size cannot be read when buckets are built are left out of every epoch and
listed too (:attr:`~vdiff.data.shard_loader.ShardLoader.index_errors`).

Workers (``data.num_workers``): raw clips are decoded ahead of training in that many processes
per rank (a torch DataLoader over the planned batches, :mod:`vdiff.data.workers`). The
batches are bit-identical to in-process decoding, and the position (so the checkpointed
state) only moves when a batch is handed to training: batches read ahead are not consumed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from vdiff.data.clips import (
    clip_frame_indices,
    decode_mp4_frames,
    frames_spanned,
    frames_to_video,
    max_start,
    probe_video_bytes,
)
from vdiff.data.shards import SampleRef, read_sample
from vdiff.io.video import VideoError

VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov")
"""member extensions read as raw video"""
CACHED_EXT = "safetensors"
"""member extension of cached samples (tensors ``latents`` and ``context``)"""
CLIP_META_KEYS = ("num_frames", "fps", "width", "height")
"""what a raw sample's json states about its clip (vdiff shards), or a probe of the video finds"""
CAPTION_KEYS = ("caption", "text", "txt", "prompt")
"""json keys read as the caption, in order, when a sample has no ``.txt`` member"""
EMPTY_PROMPT_FILE = "empty_prompt.safetensors"
"""written by `vdiff cache` next to its shards/: the empty prompt's embedding (tensor ``context`` (L, D))"""
MAX_BAD_IN_A_ROW = 16
"""data.on_error=skip gives up (raises) when this many samples in a row, in shard order, are bad"""
T = TypeVar("T")
SKIPPED_KEY = "skipped"
"""batch entry of :meth:`SampleReader.batch`: records of the bad samples replaced in that batch"""


class DataError(ValueError):
    """A sample that cannot be used; the message names the shard and the sample key."""

    def __init__(self, message: str, *, shard: str | Path, key: str) -> None:
        super().__init__(message)
        self.shard, self.key = str(shard), key

    def __reduce__(self) -> tuple[Any, ...]:  # NOTE: picklable with its keywords (worker processes)
        return _data_error, (str(self), self.shard, self.key)


def _data_error(message: str, shard: str, key: str) -> DataError:
    return DataError(message, shard=shard, key=key)


def naming_sample(ref: SampleRef, read: Callable[[], T]) -> T:
    """``read()``; an error whose message does not name ``ref``'s shard and key becomes a
    :class:`DataError` that does (the original is its cause)."""
    try:
        return read()
    except MemoryError:
        raise
    except Exception as e:
        if str(ref.shard) in str(e) and ref.key in str(e):
            raise
        message = f"{ref.shard}: sample {ref.key!r}: {type(e).__name__}: {e}"
        raise DataError(message, shard=ref.shard, key=ref.key) from e


def bad_sample_record(ref: SampleRef, error: Exception, *, epoch: int) -> dict[str, Any]:
    """What the run folder lists of a skipped sample: shard, key, the error (one line), first epoch."""
    message = "; ".join(ln.strip() for ln in str(error).splitlines() if ln.strip()) or type(error).__name__
    return {"shard": str(ref.shard), "key": ref.key, "error": message, "epoch": epoch}


@dataclass
class DataConfig:
    """Which shards to read and how clips become tensors."""

    path: str = ""
    """dataset folder (curate/cache output with shards/, a folder of .tar shards, or one .tar)"""
    kind: Literal["auto", "raw", "cached"] = "auto"
    """raw: mp4 clips; cached: latents + text embeddings from `vdiff cache`; auto: detect"""
    num_frames: int = 8
    """frames per training clip (raw shards)"""
    fps: float = 8.0
    """frame rate the clip is sampled at (raw shards)"""
    height: int = 32
    """clip height after resize + centre crop (raw shards)"""
    width: int = 32
    """clip width after resize + centre crop (raw shards)"""
    random_offset: bool = False
    """start each clip at a random frame (seeded per epoch and sample) instead of the first"""
    shuffle: bool = True
    """permute samples every epoch (seeded); false keeps shard order"""
    buckets: list[str] = field(default_factory=list)
    """aspect-ratio buckets as HxW sizes, e.g. [32x32, 32x48, 48x32]; empty = height x width only"""
    num_workers: int = 2
    """processes per rank decoding raw clips ahead of training (same batches); 0 = in the training process"""
    on_error: Literal["skip", "raise"] = "skip"
    """a sample that cannot be read: skip (the next readable sample of its bucket takes its place; counted
    and listed) or raise (stop, naming the shard and the sample)"""

    def validate(self) -> None:
        for name in ("num_frames", "height", "width"):
            if getattr(self, name) <= 0:
                raise ValueError(f"data.{name} must be > 0, got {getattr(self, name)}")
        if self.fps <= 0:
            raise ValueError(f"data.fps must be > 0, got {self.fps}")
        if self.num_workers < 0:
            raise ValueError(
                f"data.num_workers must be >= 0 (0: decode in the training process), got {self.num_workers}"
            )
        self.sizes()

    def sizes(self) -> list[tuple[int, int]]:
        """Clip sizes (height, width): the buckets, or the one ``height x width``."""
        if not self.buckets:
            return [(self.height, self.width)]
        out = []
        for text in self.buckets:
            h, _, w = str(text).lower().partition("x")
            if not (h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
                raise ValueError(f"data.buckets: {text!r} is not a size HxW such as 32x48")
            out.append((int(h), int(w)))
        return out


def bucket_index(meta: dict[str, Any], sizes: list[tuple[int, int]], *, name: str = "clip") -> int:
    """The bucket whose aspect ratio is closest to the clip's ``width``/``height`` (log ratio)."""
    if len(sizes) == 1:
        return 0
    if not meta.get("width") or not meta.get("height"):
        raise ValueError(
            f"{name}: bucketing needs width and height in its json; re-curate or drop data.buckets"
        )
    ratio = math.log(float(meta["width"]) / float(meta["height"]))
    return min(range(len(sizes)), key=lambda i: abs(math.log(sizes[i][1] / sizes[i][0]) - ratio))


def detect_kind(ref: SampleRef) -> Literal["raw", "cached"]:
    """``cached`` when a sample holds a ``.safetensors`` member, ``raw`` when it holds a video."""
    if CACHED_EXT in ref.members:
        return "cached"
    if any(ext in ref.members for ext in VIDEO_EXTS):
        return "raw"
    raise ValueError(
        f"{ref.shard}: sample {ref.key!r} has members {sorted(ref.members)}; expected a video "
        f"({', '.join(VIDEO_EXTS)}) or a .{CACHED_EXT} from `vdiff cache`"
    )


def _meta(ref: SampleRef, payload: dict[str, bytes]) -> dict[str, Any]:
    if "json" not in payload:
        return {}
    try:
        meta = json.loads(payload["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{ref.shard}: {ref.key}.json is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(
            f"{ref.shard}: {ref.key}.json holds a {type(meta).__name__}, not an object of clip metadata; "
            "fix it or remove the sample"
        )
    return meta


def _caption(ref: SampleRef, meta: dict[str, Any], payload: dict[str, bytes]) -> str:
    """The ``.txt`` member (stripped), else the first string among the json's :data:`CAPTION_KEYS`."""
    if "txt" in payload:
        try:
            text = payload["txt"].decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{ref.shard}: {ref.key}.txt is not UTF-8 text ({e}); rewrite the caption as UTF-8"
            ) from e
        if text:
            return text
    for key in CAPTION_KEYS:
        if isinstance(meta.get(key), str) and meta[key].strip():
            return meta[key]
    # NOTE: an uncaptioned clip trains the unconditional branch (the empty prompt).
    return ""


def _video_ext(ref: SampleRef, members: dict[str, Any]) -> str:
    ext = next((e for e in VIDEO_EXTS if e in members), None)
    if ext is None:
        raise ValueError(
            f"{ref.shard}: sample {ref.key!r} holds no video member (it has {sorted(members)}; expected "
            f"one of {', '.join(VIDEO_EXTS)}); remove the sample or add its video"
        )
    return ext


def _is_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def clip_meta(ref: SampleRef, payload: dict[str, bytes] | None = None) -> dict[str, Any]:
    """A raw sample's json, with any of :data:`CLIP_META_KEYS` it lacks found by probing its video.

    vdiff shards state them all, so their video is not read; a sample from another tool gets
    them from the container. ``payload`` (the sample's members) is read when not given.
    """
    if payload is None:
        meta = _meta(ref, read_sample(ref, ("json",)))
        payload = {} if all(k in meta for k in CLIP_META_KEYS) else read_sample(ref)
    else:
        meta = _meta(ref, payload)
    return _complete(ref, meta, payload, need=CLIP_META_KEYS)


def _complete(
    ref: SampleRef, meta: dict[str, Any], payload: dict[str, bytes], *, need: tuple[str, ...]
) -> dict[str, Any]:
    """``meta``, or when it lacks one of ``need``, ``meta`` plus every clip key a probe finds."""
    for key in ("num_frames", "fps"):
        if key in meta and not _is_positive(meta[key]):
            raise ValueError(
                f"{ref.shard}: {ref.key}.json says {key}={meta[key]!r}, so the clip cannot be sampled; "
                "remove the sample, or fix or drop that key (the video is then probed)"
            )
    if all(k in meta for k in need):
        return meta
    missing = [k for k in CLIP_META_KEYS if k not in meta]
    ext = _video_ext(ref, payload)
    try:
        probed = probe_video_bytes(payload[ext], name=f"{ref.shard}:{ref.key}.{ext}")
    except VideoError as e:
        raise VideoError(f"{e}; re-encode it or remove the sample from the shard") from e
    return {**meta, **{k: getattr(probed, k) for k in missing}}


def clip_start(
    ref: SampleRef, meta: dict[str, Any], cfg: DataConfig, *, generator: torch.Generator | None
) -> int:
    """First source frame of the clip: 0, or uniform over the starts that fit when random."""
    if not cfg.random_offset or generator is None:
        return 0
    hi = max_start(int(meta["num_frames"]), float(meta["fps"]), num_frames=cfg.num_frames, fps=cfg.fps)
    return int(torch.randint(0, hi + 1, (1,), generator=generator))


def load_raw_sample(
    ref: SampleRef, cfg: DataConfig, *, generator: torch.Generator | None = None
) -> dict[str, Any]:
    """``{"video": (3, T, H, W) in [-1, 1], "caption": str, "key": str}`` of a raw-clip sample."""
    payload = read_sample(ref)
    ext = _video_ext(ref, payload)
    name = f"{ref.shard}:{ref.key}.{ext}"
    sizes = cfg.sizes()
    stated = _meta(ref, payload)
    meta = _complete(ref, stated, payload, need=CLIP_META_KEYS[: 2 if len(sizes) == 1 else 4])
    # NOTE: vdiff shards state the clip in their json (and pad a short one with its last frame);
    # a probed clip from another tool must span the whole training clip.
    if "num_frames" not in stated or "fps" not in stated:
        check_clip_fits(meta, cfg, name=name)
    height, width = sizes[bucket_index(meta, sizes, name=f"{ref.shard}:{ref.key}")]
    start = clip_start(ref, meta, cfg, generator=generator)
    idx = clip_frame_indices(
        int(meta["num_frames"]), float(meta["fps"]), num_frames=cfg.num_frames, fps=cfg.fps, start=start
    )
    frames = decode_mp4_frames(payload[ext], idx, name=name)  # (T, H, W, 3)
    video = frames_to_video(frames, height=height, width=width)  # (3, T, H, W)
    return {"video": video, "caption": _caption(ref, meta, payload), "key": ref.key}


def check_clip_fits(meta: dict[str, Any], cfg: DataConfig, *, name: str) -> None:
    """Refuse a clip too short for ``data.num_frames`` frames at ``data.fps`` (ValueError naming it)."""
    n, fps = int(meta["num_frames"]), float(meta["fps"])
    need = frames_spanned(fps, num_frames=cfg.num_frames, fps=cfg.fps)
    if n < need:
        raise ValueError(
            f"{name}: {n} frames at {fps:g} fps ({n / fps:.2f} s) is too short for a training clip of "
            f"data.num_frames={cfg.num_frames} at data.fps={cfg.fps:g}, which spans {need} frames "
            f"({need / fps:.2f} s) of it; lower data.num_frames or data.fps, or remove the sample"
        )


def load_cached_sample(ref: SampleRef) -> dict[str, Any]:
    """``{"latents": (C, T', H', W'), "context": (L, D), "caption", "key"}`` of a cached sample."""
    from safetensors.torch import load as load_safetensors

    payload = read_sample(ref)
    tensors = load_safetensors(payload[CACHED_EXT])
    missing = {"latents", "context"} - set(tensors)
    if missing:
        raise ValueError(f"{ref.shard}: {ref.key}.{CACHED_EXT} lacks {sorted(missing)}; re-run `vdiff cache`")
    meta = _meta(ref, payload)
    return {
        "latents": tensors["latents"],
        "context": tensors["context"],
        "caption": _caption(ref, meta, payload),
        "key": ref.key,
    }


def cached_settings(ref: SampleRef) -> dict[str, Any]:
    """The ``cache`` block (data/vae/text settings) `vdiff cache` stored in a sample's json."""
    return dict(_meta(ref, read_sample(ref, ("json",))).get("cache", {}))


def load_empty_prompt(data_path: str | Path) -> torch.Tensor:
    """The empty-prompt embedding (L, D) stored with cached shards (for caption dropout)."""
    from safetensors.torch import load_file

    root = Path(data_path).resolve()
    # NOTE: data.path may name the cache folder, its shards/ folder, or one shard in it.
    for folder in (root, *root.parents[:2]):
        if (folder / EMPTY_PROMPT_FILE).is_file():
            return load_file(str(folder / EMPTY_PROMPT_FILE))["context"]
    raise FileNotFoundError(
        f"cached data {data_path} has no {EMPTY_PROMPT_FILE}; "
        "re-run `vdiff cache` or set flow.caption_dropout=0"
    )


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors along a new batch dim; keep strings as lists."""
    out: dict[str, Any] = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


class SampleReader:
    """Loads samples by index: all a worker holds (shard index, buckets, config, seed; no position)."""

    def __init__(
        self, refs: list[SampleRef], cfg: DataConfig, *, kind: str, seed: int, bucket: list[int] | None = None
    ) -> None:
        self.refs, self.cfg, self.kind, self.seed = refs, cfg, kind, seed
        self.bucket = bucket if bucket is not None else [0] * len(refs)

    def load(self, index: int, epoch: int) -> dict[str, Any]:
        """One sample; a raw clip's random start is seeded by (seed, epoch, index), not by rank.

        Any error names the sample's shard and key (:func:`naming_sample`).
        """
        ref = self.refs[index]
        if self.kind == "cached":
            return naming_sample(ref, lambda: load_cached_sample(ref))
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
        return naming_sample(ref, lambda: load_raw_sample(ref, self.cfg, generator=g))

    def load_or_replace(self, index: int, epoch: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Sample ``index``, or with ``data.on_error=skip`` the next readable one of its bucket in shard
        order, and the records of the bad samples passed over (see the module doc)."""
        skipped: list[dict[str, Any]] = []
        candidate = index
        while True:
            try:
                return self.load(candidate, epoch), skipped
            except MemoryError:
                raise
            except Exception as e:
                if self.cfg.on_error == "raise":
                    raise
                skipped.append(bad_sample_record(self.refs[candidate], e, epoch=epoch))
                candidate = self._next_in_bucket(candidate)
                if candidate == index or len(skipped) >= MAX_BAD_IN_A_ROW:
                    raise DataError(
                        f"{len(skipped)} samples in a row could not be read (data.on_error=skip skips bad "
                        f"samples, not a bad dataset); first: {skipped[0]['error']}",
                        shard=skipped[0]["shard"],
                        key=skipped[0]["key"],
                    ) from e

    def _next_in_bucket(self, index: int) -> int:
        n = len(self.refs)
        for step in range(1, n + 1):
            j = (index + step) % n
            if self.bucket[j] == self.bucket[index]:
                return j
        return index

    def batch(self, indices: list[int], epoch: int) -> dict[str, Any]:
        """The samples ``indices`` of ``epoch``, collated, with :data:`SKIPPED_KEY`: the records of the
        bad samples replaced (``data.on_error=skip``), in order."""
        samples, skipped = [], []
        for i in indices:
            sample, bad = self.load_or_replace(i, epoch)
            samples.append(sample)
            skipped += bad
        return {**collate(samples), SKIPPED_KEY: skipped}


class BatchPlan:
    """Which samples form each global batch of an epoch, and this rank's slice of it (no I/O)."""

    def __init__(
        self, bucket: list[int], *, batch_size: int, rank: int, world: int, seed: int, shuffle: bool
    ) -> None:
        self.bucket = bucket
        self.batch_size, self.rank, self.seed, self.shuffle = batch_size, rank, seed, shuffle
        self.global_batch = batch_size * world
        self._batches: dict[int, list[list[int]]] = {}

    def order(self, epoch: int) -> list[int]:
        """Sample indices of an epoch (the same on every rank)."""
        if not self.shuffle:
            return list(range(len(self.bucket)))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.bucket), generator=g).tolist()

    def batches(self, epoch: int) -> list[list[int]]:
        """The global batches of an epoch: filled in permutation order, one bucket at a time."""
        if epoch not in self._batches:
            # NOTE: two epochs are kept, since read-ahead plans the next epoch before this one is done.
            if len(self._batches) >= 2:
                del self._batches[min(self._batches)]
            pending: dict[int, list[int]] = {}
            batches = []
            for i in self.order(epoch):
                if self.bucket[i] < 0:  # NOTE: a sample whose size could not be read (data.on_error=skip)
                    continue
                group = pending.setdefault(self.bucket[i], [])
                group.append(i)
                if len(group) == self.global_batch:
                    batches.append(group)
                    pending[self.bucket[i]] = []
            self._batches[epoch] = batches
        return self._batches[epoch]

    def batch_indices(self, epoch: int, step: int) -> list[int]:
        """This rank's sample indices of global batch ``step`` of ``epoch``."""
        lo = self.rank * self.batch_size
        return self.batches(epoch)[step][lo : lo + self.batch_size]

    def normalize(self, epoch: int, step: int) -> tuple[int, int]:
        """The position ``(epoch, step)`` of the next batch to read: past an epoch's end is the next epoch."""
        while step >= len(self.batches(epoch)):
            epoch, step = epoch + 1, 0
        return epoch, step

    def positions(self, epoch: int, step: int) -> Iterator[tuple[int, int]]:
        """Every batch position from ``(epoch, step)`` on (never ends)."""
        while True:
            epoch, step = self.normalize(epoch, step)
            yield epoch, step
            step += 1
