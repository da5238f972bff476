"""The local curation engine: one job per video in isolated worker processes, then a finalize step.

Per video (:func:`process_video`, in a worker process): decode once at the analysis
resolution, cut scenes, cut clips, score motion and quality of every candidate clip,
fingerprint the survivors and re-encode them from the source frames at full size. The result
(analysis rows + encoded clips) is committed atomically to ``DIR/work/<sha>-<cfg>.tar``, keyed
by the file's content hash and a hash of the per-video config, so a re-run skips finished
videos and a changed config never reuses stale work.

:func:`finalize` (in the main process, re-runnable) then deduplicates across the run, keeping
the best copy of each set of near-duplicates (:func:`data_prep.dedup.duplicates_of`), captions
the kept clips, packs them into shards in sorted order, and writes ``manifest.parquet``,
``report.json`` and ``report.html``. Its outputs depend only on the work files and the config
(and the sources' sizes, for their bitrates), so a run killed at any point and started again
produces the same files as an uninterrupted one.

Every video runs in its own forked child process: a decoder crash on a corrupt file (even a
segfault) becomes an error row for that input, never a dead run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import signal
import sys
import tarfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import connection, get_context
from pathlib import Path
from typing import Any

from data_prep.analysis import analyze_video
from data_prep.captions import CaptionConfig, CaptionRequest, build_captioner
from data_prep.clips import ClipConfig
from data_prep.decode import DecodeConfig
from data_prep.dedup import DedupConfig, clip_fingerprint, duplicates_of
from data_prep.inputs import InputItem
from data_prep.manifest import write_manifest
from data_prep.motion import MotionConfig, classify_motion, motion_score
from data_prep.quality import QualityConfig, assess_quality
from data_prep.scenes import SceneConfig
from data_prep.shards import (
    PACKING_KEYS,
    SHARD_NAMES,
    OutputConfig,
    ShardSample,
    encode_clips,
    output_frame_indices,
    output_geometry,
    sample_mp4_frames,
    write_shards,
)
from vdiff.config import to_dict
from vdiff.io.files import atomic_open, atomic_write_json, file_sha256
from vdiff.io.outdir import remove_own_temps
from vdiff.io.video import VideoError, VideoMeta

WORK_VERSION = 4
"""Bump when the work-file layout or the meaning of a per-video stage changes."""

STAGES = ("decode", "scenes", "motion", "quality", "dedup", "caption", "encode", "shard")
"""Stages timed in ``report.json``."""


@dataclass
class CurateConfig:
    """Everything ``vdiff curate`` does, one section per stage (defaults in configs/curate.yaml)."""

    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """one decode pass per video at the analysis resolution"""
    scenes: SceneConfig = field(default_factory=SceneConfig)
    """scene-cut detection"""
    clips: ClipConfig = field(default_factory=ClipConfig)
    """clip length and placement inside scenes"""
    motion: MotionConfig = field(default_factory=MotionConfig)
    """motion scoring and the too_static / too_fast thresholds"""
    quality: QualityConfig = field(default_factory=QualityConfig)
    """size, blur and darkness filters"""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """near-duplicate removal across the whole run"""
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    """how kept clips are captioned"""
    output: OutputConfig = field(default_factory=OutputConfig)
    """output clip encoding and shard packing"""


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def work_config_hash(cfg: CurateConfig) -> str:
    """Hash of every config key a per-video job depends on (not dedup matching, captions, packing)."""
    d = to_dict(cfg)
    out = dict(d["output"])
    for key in PACKING_KEYS:
        out.pop(key)
    keyed = {k: d[k] for k in ("decode", "scenes", "clips", "motion", "quality")}
    fingerprint = {"num_frames": d["dedup"]["num_frames"]}
    return _hash({"v": WORK_VERSION, **keyed, "output": out, "fingerprint": fingerprint})


def clip_id_for(sha256: str, start: int, end: int) -> str:
    """Deterministic clip id from the source content hash and the frame range (no dots: WebDataset keys)."""
    return f"{sha256[:16]}_{start:07d}_{end:07d}"


# ----------------------------------------------------------------------------- per video


def _span_fields(span: Any) -> tuple[int, int, int, int]:
    """(scene_start, scene_end, start, end) of a ClipSpan or of a bare (start, end) scene."""
    if isinstance(span, tuple | list):
        s, e = int(span[0]), int(span[1])
        return s, e, s, e
    return int(span.scene_start), int(span.scene_end), int(span.start_frame), int(span.end_frame)


def _row(sha: str, meta: VideoMeta, span: Any, cfg: CurateConfig) -> dict[str, Any]:
    scene_start, scene_end, start, end = _span_fields(span)
    out_fps, w, h = output_geometry(meta, cfg.output)
    n_out = len(output_frame_indices(start=start, end=end, src_fps=meta.fps, out_fps=out_fps))
    return {
        "clip_id": clip_id_for(sha, start, end),
        "source_sha256": sha,
        "scene_start": scene_start,
        "scene_end": scene_end,
        "start_frame": start,
        "end_frame": end,
        "source_fps": float(meta.fps),
        "fps": out_fps,
        "num_frames": n_out,
        "width": w,
        "height": h,
        "duration": (end - start) / meta.fps,
        "motion": None,
        "status": None,
        "fingerprint": None,
    }


def _score_clip(frames, *, meta: VideoMeta, cfg: CurateConfig, times: dict[str, float]) -> dict[str, Any]:
    """Quality, motion and (for passing clips) the dedup fingerprint of one clip's analysis frames."""
    t0 = time.perf_counter()
    status = assess_quality(frames, meta=meta, cfg=cfg.quality)
    times["quality"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    result = motion_score(frames, fps=meta.fps, cfg=cfg.motion)
    status = status or classify_motion(result, cfg.motion)
    times["motion"] += time.perf_counter() - t0
    fingerprint = None
    if status is None:
        t0 = time.perf_counter()
        fingerprint = [int(x) for x in clip_fingerprint(frames, num_frames=cfg.dedup.num_frames)]
        times["dedup"] += time.perf_counter() - t0
    return {"status": status, "motion": float(result.score), "fingerprint": fingerprint}


def analyze_and_encode(path: Path, *, sha: str, cfg: CurateConfig) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Run the per-video stages; return (result, {clip_id: mp4 bytes}). Raises VideoError.

    One streaming analysis pass (:func:`data_prep.analysis.analyze_video`: memory bounded
    whatever the video's length), then one encoding pass over the passing clips.
    """
    times = dict.fromkeys(STAGES, 0.0)
    analysis = analyze_video(
        path,
        decode=cfg.decode,
        scenes=cfg.scenes,
        clips=cfg.clips,
        score=lambda frames, source: _score_clip(frames, meta=source, cfg=cfg, times=times),
    )
    meta = analysis.meta
    times["decode"] += analysis.seconds["decode"]
    times["scenes"] += analysis.seconds["scenes"]

    rows = []
    for span in analysis.too_short:
        row = _row(sha, meta, span, cfg)
        row["status"] = "too_short"
        rows.append(row)
    for span in analysis.clips:
        row = _row(sha, meta, span, cfg)
        row.update(analysis.stats[(span.start_frame, span.end_frame)])
        rows.append(row)
    rows.sort(key=lambda r: (r["start_frame"], r["end_frame"]))

    t0 = time.perf_counter()
    mp4s: dict[str, bytes] = {}
    passing = [r for r in rows if r["status"] is None]
    spans = [(r["start_frame"], r["end_frame"]) for r in passing]
    for r, (mp4, _) in zip(passing, encode_clips(path, meta=meta, spans=spans, cfg=cfg.output)):
        mp4s[r["clip_id"]] = mp4
    times["encode"] = time.perf_counter() - t0
    result = {
        "sha256": sha,
        "error": None,
        "meta": dataclasses.asdict(meta),
        "truncated": analysis.truncated,
        "rows": rows,
        "seconds": times,
    }
    return result, mp4s


def work_path(work_dir: Path, sha: str, cfg_hash: str) -> Path:
    """Where the per-video result of a file with content ``sha`` under config ``cfg_hash`` lives."""
    return work_dir / f"{sha[:32]}-{cfg_hash}.tar"


def _write_work(path: Path, result: dict[str, Any], mp4s: dict[str, bytes]) -> None:
    with atomic_open(path, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
        for name, data in [*((f"{k}.mp4", v) for k, v in sorted(mp4s.items())), ("result.json", None)]:
            if data is None:
                data = json.dumps(result).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def read_work_result(path: Path) -> dict[str, Any]:
    """The ``result.json`` of a work file."""
    with tarfile.open(path) as tar:
        return json.loads(tar.extractfile("result.json").read())  # type: ignore[union-attr]


def read_work_clip(path: Path, clip_id: str) -> bytes:
    """The encoded mp4 of ``clip_id`` from a work file."""
    with tarfile.open(path) as tar:
        return tar.extractfile(f"{clip_id}.mp4").read()  # type: ignore[union-attr]


@dataclass(frozen=True)
class VideoTask:
    """One input for a worker: the path, the run's work folder and config."""

    index: int
    path: Path
    work_dir: Path
    cfg: CurateConfig


def process_video(task: VideoTask) -> dict[str, Any]:
    """Per-video job: reuse the committed work file or compute and commit it; return a summary.

    The summary holds ``index``, ``path``, ``sha256``, ``work`` (the work file, or None),
    ``error`` (None or the reason) and ``reused``. Unreadable videos are committed as error
    results (the same bytes fail the same way); unexpected exceptions are reported but not
    committed, so a fixed bug re-runs them.
    """
    base = {"index": task.index, "path": str(task.path), "sha256": None, "work": None, "reused": False}
    try:
        if not task.path.is_file():
            raise VideoError(f"{task.path}: no such file")
        sha = file_sha256(task.path)
    except (OSError, VideoError) as e:
        return {**base, "error": str(e)}
    base["sha256"] = sha
    wp = work_path(task.work_dir, sha, work_config_hash(task.cfg))
    if wp.is_file():
        return {**base, "work": str(wp), "error": read_work_result(wp)["error"], "reused": True}
    try:
        result, mp4s = analyze_and_encode(task.path, sha=sha, cfg=task.cfg)
    except VideoError as e:
        result, mp4s = {"sha256": sha, "error": str(e), "rows": [], "seconds": {}}, {}
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        return {**base, "error": f"internal error while processing {task.path}: {type(e).__name__}: {e}"}
    _write_work(wp, result, mp4s)
    return {**base, "work": str(wp), "error": result["error"]}


# ----------------------------------------------------------------------------- isolation


def _die_with_parent() -> None:
    # NOTE: Linux only; a worker whose parent is killed (kill -9) is killed too, instead of
    # running on as an orphan next to the re-started run.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _child(conn, fn: Callable[[Any], Any], arg: Any) -> None:
    _die_with_parent()
    conn.send(fn(arg))
    conn.close()


def crash_reason(exitcode: int | None, what: str) -> str:
    """Why a worker that processed ``what`` died without a result, in words."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the worker processing {what} crashed ({name}); the file is probably corrupt"
    return f"the worker processing {what} exited with code {exitcode} without a result"


def run_isolated(
    fn: Callable[[Any], dict[str, Any]],
    args: Sequence[Any],
    *,
    workers: int,
    on_crash: Callable[[Any, int | None], dict[str, Any]],
) -> Iterator[dict[str, Any]]:
    """Run ``fn(arg)`` for each arg, each in its own forked process, ``workers`` at a time.

    Yields results in completion order. A child that dies without a result (segfault, OOM
    kill) yields ``on_crash(arg, exitcode)`` instead.
    """
    ctx = get_context("fork")
    pending = list(enumerate(args))[::-1]
    running: dict[Any, tuple[Any, Any, Any]] = {}  # sentinel -> (process, conn, arg)
    try:
        while pending or running:
            while pending and len(running) < max(1, workers):
                _, arg = pending.pop()
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, args=(send, fn, arg), daemon=True)
                proc.start()
                send.close()
                running[proc.sentinel] = (proc, recv, arg)
            ready = connection.wait([c for _, c, _ in running.values()] + list(running))
            for sentinel, (proc, recv, arg) in list(running.items()):
                if recv not in ready and sentinel not in ready:
                    continue
                result = None
                if recv.poll():
                    with contextlib.suppress(EOFError):
                        result = recv.recv()
                elif sentinel not in ready:
                    continue
                proc.join()
                recv.close()
                del running[sentinel]
                yield result if result is not None else on_crash(arg, proc.exitcode)
    finally:
        for proc, recv, _ in running.values():
            proc.kill()
            proc.join()
            recv.close()


def crash_summary(task: VideoTask, exitcode: int | None) -> dict[str, Any]:
    """The summary of a task whose worker died without a result."""
    return {
        "index": task.index,
        "path": str(task.path),
        "sha256": None,
        "work": None,
        "reused": False,
        "error": crash_reason(exitcode, str(task.path)),
    }


def warm_imports() -> None:
    """Import the stages' heavy dependencies once, so forked workers inherit them loaded."""
    import av  # noqa: F401
    import cv2  # noqa: F401
    import imagehash  # noqa: F401
    import scenedetect  # noqa: F401
    import scipy.fftpack  # noqa: F401  (imagehash.phash imports it on first use)


def run_local(tasks: Sequence[VideoTask], *, workers: int, progress: bool = True) -> list[dict[str, Any]]:
    """Process every task in isolated worker processes with a progress bar; summaries in task order."""
    from tqdm import tqdm

    warm_imports()  # NOTE: ~1-2 s per worker otherwise (scipy via imagehash, scenedetect)

    tqdm.monitor_interval = 0  # NOTE: no monitor thread in the parent we fork from
    out: list[dict[str, Any]] = []
    with tqdm(total=len(tasks), desc="curate", unit="video", disable=not progress, file=sys.stderr) as bar:
        for summary in run_isolated(process_video, tasks, workers=workers, on_crash=crash_summary):
            out.append(summary)
            bar.update(1)
    return sorted(out, key=lambda s: s["index"])


# ----------------------------------------------------------------------------- finalize


def _caption_rows(rows: list[dict[str, Any]], *, cfg: CaptionConfig, work_dir: Path) -> None:
    """Fill ``caption`` of rows (in place), reusing captions cached for this caption config."""
    cache_path = work_dir / f"captions-{_hash(to_dict(cfg))}.json"
    cache: dict[str, str | None] = {}
    if cache_path.is_file():
        cache = json.loads(cache_path.read_text())
    todo = [r for r in rows if r["clip_id"] not in cache]
    if todo:
        captioner = build_captioner(cfg)
        batch = max(cfg.batch_size, 1) * 4
        for i in range(0, len(todo), batch):
            chunk = todo[i : i + batch]
            requests = [
                CaptionRequest(
                    clip_id=r["clip_id"],
                    source=Path(r["source"]),
                    frames=lambda n, r=r: sample_mp4_frames(read_work_clip(Path(r["work"]), r["clip_id"]), n),
                )
                for r in chunk
            ]
            for r, cap in zip(chunk, captioner(requests)):
                cache[r["clip_id"]] = cap
            if cfg.method == "vlm":
                atomic_write_json(cache_path, cache)  # NOTE: VLM captions are costly; keep them on a crash
    for r in rows:
        r["caption"] = cache[r["clip_id"]]


def _shard_meta(r: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "clip_id", "caption", "source", "source_sha256", "scene_start", "scene_end", "start_frame",
        "end_frame", "source_fps", "fps", "num_frames", "width", "height", "duration", "motion",
    )  # fmt: skip
    return {k: r[k] for k in keys}


def source_quality(path: Path, meta: dict[str, Any] | None) -> dict[str, Any]:
    """``source_width``, ``source_height`` and ``source_bitrate`` (bits/s) of a source video.

    The bitrate is the file's size over the video's duration (``meta``: the work result's
    :class:`VideoMeta` fields); unknown values are None (they rank last in dedup).
    """
    meta = meta or {}
    num_frames, fps = meta.get("num_frames") or 0, meta.get("fps") or 0.0
    bitrate = None
    if num_frames > 0 and fps > 0:
        with contextlib.suppress(OSError):
            bitrate = round(path.stat().st_size * 8 * fps / num_frames)
    return {"source_width": meta.get("width"), "source_height": meta.get("height"), "source_bitrate": bitrate}


def finalize(
    items: Sequence[InputItem],
    summaries: Sequence[dict[str, Any]],
    *,
    cfg: CurateConfig,
    out_dir: Path,
    started: float | None = None,
) -> dict[str, Any]:
    """Dedup, caption, pack shards, write manifest and report from the work files; return the report.

    ``started`` is the run's ``time.perf_counter()`` at its start, for the wall time in the report.
    """
    work_dir = out_dir / "work"
    times = dict.fromkeys(STAGES, 0.0)
    inputs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    first_path_of: dict[str, str] = {}
    by_index = {s["index"]: s for s in summaries}
    for i, item in enumerate(items):
        entry: dict[str, Any] = {"path": str(item.path), "status": "ok", "reason": None}
        entry.update(clips=0, kept=0)
        inputs.append(entry)
        s = by_index.get(i)
        if item.error or s is None or s["error"]:
            entry.update(status="error", reason=item.error or (s or {}).get("error") or "not processed")
            continue
        sha = s["sha256"]
        if sha in first_path_of:
            entry["reason"] = f"same content as {first_path_of[sha]}; its clips are counted there"
            continue
        first_path_of[sha] = str(item.path)
        result = read_work_result(Path(s["work"]))
        for k, v in result["seconds"].items():
            times[k] += v
        if result.get("truncated"):
            entry["reason"] = "truncated stream: only the frames that decoded were used"
        quality = source_quality(Path(item.path), result.get("meta"))
        for r in result["rows"]:
            r.update(source=str(item.path), work=s["work"], caption=None, shard=None, duplicate_of=None)
            r.update(quality)
            r["_input"] = entry
            rows.append(r)
        entry["clips"] = len(result["rows"])

    # Dedup across the run, best copy first (source resolution, bitrate, clip length, clip_id):
    # the survivor is the best copy and does not depend on which worker finished first.
    t0 = time.perf_counter()
    candidates = [r for r in rows if r["status"] is None] if cfg.dedup.enabled else []
    survivor_of = duplicates_of(candidates, cfg.dedup)
    for r in candidates:
        if r["clip_id"] in survivor_of:
            r["status"], r["duplicate_of"] = "duplicate", survivor_of[r["clip_id"]]
    times["dedup"] += time.perf_counter() - t0

    survivors = sorted((r for r in rows if r["status"] is None), key=lambda r: r["clip_id"])
    t0 = time.perf_counter()
    _caption_rows(survivors, cfg=cfg.caption, work_dir=work_dir)
    times["caption"] = time.perf_counter() - t0
    for r in survivors:
        r["status"] = "no_caption" if cfg.caption.required and not r["caption"] else "kept"
    kept = [r for r in survivors if r["status"] == "kept"]

    t0 = time.perf_counter()
    samples = [
        ShardSample(
            clip_id=r["clip_id"],
            load_mp4=lambda r=r: read_work_clip(Path(r["work"]), r["clip_id"]),
            meta=_shard_meta(r),
        )
        for r in kept
    ]
    where = write_shards(
        samples,
        out_dir / "shards",
        samples_per_shard=cfg.output.samples_per_shard,
        min_shards=cfg.output.min_shards,
    )
    for r in kept:
        r["shard"] = where[r["clip_id"]]
        r["_input"]["kept"] += 1
    times["shard"] = time.perf_counter() - t0

    write_manifest(rows, out_dir / "manifest.parquet")
    counts = Counter(r["status"] for r in rows)
    report = {
        "inputs": inputs,
        "counts": dict(sorted(counts.items())),
        "clips": len(rows),
        "kept": len(kept),
        "errors": sum(e["status"] == "error" for e in inputs),
        "shards": sorted(set(where.values())),
        "stage_seconds": {k: round(v, 4) for k, v in times.items()},
        "wall_seconds": round(time.perf_counter() - started, 3) if started is not None else None,
        "videos_reused": sum(bool(s.get("reused")) for s in summaries),
        "work_config_hash": work_config_hash(cfg),
    }
    atomic_write_json(out_dir / "report.json", report)
    return report


OUTPUT_NAMES = {
    "": r"manifest\.parquet|report\.json|report\.html|config\.yaml|\.vdiff-curate\.json",
    "work": r"[0-9a-f]{32}-[0-9a-f]{12}\.tar|captions-[0-9a-f]{12}\.json",
    "shards": SHARD_NAMES,
}
"""Regular expressions of the file names curation writes in ``DIR``, ``DIR/work`` and ``DIR/shards``."""


def prepare_out_dir(out_dir: Path) -> None:
    """Create the output folders and remove the temporary files a killed run left for our names.

    Only those: other files (a user's, another tool's) are never removed. Call it while holding
    the folder's lock (:func:`vdiff.io.outdir.out_dir_lock`): a running run's temporary files
    look the same.
    """
    for sub, names in OUTPUT_NAMES.items():
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
        remove_own_temps(out_dir / sub, names)


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
