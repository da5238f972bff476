"""``evaluate()``: score a folder of videos on the requested dimensions, decoding each video once.

Order of work: build every requested metric first (so a missing weight file or package fails
before any video is read), plan which video gets which dimensions (VBench suite, JSON map or
file names), then decode each video once and hand the frames to every metric. Unreadable
videos, expected-but-missing videos and videos a metric cannot score are listed with a reason;
the rest is scored.
"""

from __future__ import annotations

import base64
import dataclasses
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from eval.config import EvalConfig
from eval.flow import shared_flows
from eval.metric import record_weights
from eval.provenance import formula_identity, weights_manifest
from eval.registry import Metric, UnscorableVideoError, VideoSample, build_metric
from eval.stats import bootstrap_ci
from eval.vbench import (
    OUTPUT_LAYOUT,
    VIDEO_EXTENSIONS,
    load_prompts,
    prompt_from_filename,
    results_entry,
    score_script_zeros,
    vbench_scores,
    vbench_video_name,
)
from vdiff.config import to_dict
from vdiff.io.files import atomic_write_json
from vdiff.io.video import VideoError, probe, read_frames


@dataclass
class PlannedVideo:
    """A video to score, its prompt and the dimensions it is scored on."""

    path: Path
    prompt: str
    dimensions: list[str] = field(default_factory=list)


def results_file(metric: Metric) -> str:
    """Where a dimension's results go: ``eval_results.json`` when computed as VBench does, else
    ``__vdiff__/substitute_results.json``, which VBench's cal_final_score.py never reads.

    NOTE: both files key a dimension by its plain VBench name. A substitute under any key in a file
    the script reads would leave the plain key absent, which the script silently counts as 0.
    """
    return OUTPUT_LAYOUT["results"] if metric.comparable else OUTPUT_LAYOUT["substitutes"]


def plan_videos(
    videos_dir: Path,
    prompts: list[dict[str, Any]] | dict[str, str] | None,
    *,
    dimensions: list[str],
    per_prompt: int,
) -> tuple[list[PlannedVideo], list[dict[str, Any]]]:
    """Which videos to score on which dimensions, and the expected videos that are missing."""
    missing: list[dict[str, Any]] = []
    if prompts is None:
        files = sorted(
            p for p in videos_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
        )
        return [PlannedVideo(p, prompt_from_filename(p), list(dimensions)) for p in files], missing
    if isinstance(prompts, dict):
        planned = []
        for name, prompt in prompts.items():
            p = videos_dir / name
            if p.is_file():
                planned.append(PlannedVideo(p, prompt, list(dimensions)))
            else:
                missing.append({"prompt": prompt, "video_path": str(p), "reason": "file not found"})
        return planned, missing
    by_path: dict[Path, PlannedVideo] = {}
    for entry in prompts:
        wanted = [d for d in dimensions if not entry["dimension"] or d in entry["dimension"]]
        if not wanted:
            continue
        for i in range(per_prompt):
            p = videos_dir / vbench_video_name(entry["prompt_en"], i)
            if not p.is_file():
                missing.append(
                    {"prompt": entry["prompt_en"], "video_path": str(p), "reason": "file not found"}
                )
                continue
            item = by_path.setdefault(p, PlannedVideo(p, entry["prompt_en"]))
            item.dimensions += [d for d in wanted if d not in item.dimensions]
    return list(by_path.values()), missing


def frame_strip(frames: np.ndarray, count: int, height: int = 72) -> str:
    """``count`` evenly spaced frames side by side, as a base64 JPEG for the report."""
    idx = np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int)
    h, w = frames.shape[1:3]
    size = (max(1, round(w * height / h)), height)
    strip = np.concatenate([cv2.resize(frames[i], size, interpolation=cv2.INTER_AREA) for i in idx], axis=1)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    return base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""


def summarise(
    metric: Metric,
    entries: list[dict[str, Any]],
    excluded: list[dict[str, str]],
    scored: int,
    *,
    weights: dict[str, Path] | None = None,
    resamples: int = 0,
) -> dict[str, Any]:
    """One dimension's ``eval_info.json`` record: its results key, method, aggregate, 95% bootstrap
    interval over its videos (``ci95``; none for set-level metrics), exclusions, formula identity
    and weights manifest (sha256 of each file of the weights it loaded)."""
    aggregate: float | None = None
    if metric.set_level:
        try:
            aggregate = metric.finalize()
        except UnscorableVideoError as e:
            excluded.append({"video_path": "", "reason": str(e)})
    elif entries:
        aggregate = metric.aggregate(entries)
    return {
        "key": metric.name,
        "file": results_file(metric),
        "method": metric.method,
        "comparable": metric.comparable,
        "aggregate": aggregate,
        "ci95": None
        if metric.set_level or aggregate is None
        else bootstrap_ci(entries, metric.aggregate, resamples=resamples),
        "num_videos": scored,
        "excluded": [*excluded, *metric.skipped],
        "formula": formula_identity(metric),
        "weights": weights_manifest(weights or {}),
    }


def decode(path: Path) -> tuple[np.ndarray, float]:
    """All frames (T, H, W, 3) uint8 and the fps; raise VideoError for unreadable or empty videos."""
    meta = probe(path)
    frames = read_frames(path)
    if len(frames) == 0:
        raise VideoError(f"{path}: no frames decoded")
    return frames, meta.fps


@dataclass
class VideoScores:
    """What scoring one video gave: per-dimension entries (``None`` for a set-level metric that
    accumulated it) and exclusion reasons, or why the video could not be read."""

    path: str
    entries: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None
    strip: str = ""


def score_video(
    item: PlannedVideo, metrics: dict[str, Metric], *, cfg: EvalConfig, strip: bool, set_level: bool
) -> VideoScores:
    """Decode ``item`` once and score it on each of its dimensions, sharing optical flows between
    them (:func:`eval.flow.shared_flows`); set-level metrics accumulate only when ``set_level``."""
    out = VideoScores(str(item.path))
    try:
        frames, fps = decode(item.path)
    except VideoError as e:
        out.skipped = str(e)
        return out
    video = VideoSample(path=item.path, prompt=item.prompt, frames=frames, fps=fps)
    if strip:
        out.strip = frame_strip(frames, cfg.report_frames)
    with shared_flows(cfg.flow_cache_mb * 2**20):
        for name in item.dimensions:
            metric = metrics[name]
            if metric.set_level and not set_level:
                continue
            try:
                if metric.set_level:
                    metric.accumulate(video)
                    out.entries[name] = None
                else:
                    out.entries[name] = {"video_path": str(item.path), **metric.compute(video)}
            except UnscorableVideoError as e:
                out.excluded[name] = str(e)
    return out


_JOB: tuple[list[PlannedVideo], dict[str, Metric], EvalConfig, bool] | None = None
"""What forked workers score: set in the parent before the fork, read by the children."""


def _score_in_worker(i: int) -> VideoScores:
    assert _JOB is not None
    planned, metrics, cfg, strip = _JOB
    return score_video(planned[i], metrics, cfg=cfg, strip=strip, set_level=False)


def _init_worker() -> None:
    # NOTE: the processes are the parallelism; one torch thread each avoids oversubscribing the
    # cores (as torch's DataLoader workers do). OpenCV's thread count is set before the fork:
    # changing it in a forked child waits forever on the parent's pool threads.
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def score_videos(
    planned: list[PlannedVideo], metrics: dict[str, Metric], *, cfg: EvalConfig, strip: bool, progress: bool
) -> list[VideoScores]:
    """Every planned video's :class:`VideoScores`, in input order.

    With ``cfg.workers > 1`` the videos are scored in forked processes, each decoding and scoring
    its videos on all their dimensions; set-level metrics (fvd) keep state here, so this process
    decodes and accumulates their videos itself, in input order. The per-video results are the same
    whatever the number of processes, so the aggregates are too; torch models run on one thread per
    worker, so their float32 results are those of a 1-thread run (within ~1e-8 of a multi-thread one).
    """
    bar = tqdm(total=len(planned), desc="vdiff eval", unit="video", disable=not progress)
    workers = min(cfg.workers, len(planned))
    if workers <= 1:
        out = []
        for item in planned:
            out.append(score_video(item, metrics, cfg=cfg, strip=strip, set_level=True))
            bar.update()
        bar.close()
        return out
    global _JOB
    _JOB = (planned, metrics, cfg, strip)
    set_level = {n for n, m in metrics.items() if m.set_level}
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=get_context("fork"), initializer=_init_worker
        ) as pool:
            futures = [pool.submit(_score_in_worker, i) for i in range(len(planned))]
            here = [
                score_video(
                    dataclasses.replace(item, dimensions=[d for d in item.dimensions if d in set_level]),
                    metrics,
                    cfg=cfg,
                    strip=False,
                    set_level=True,
                )
                if set_level.intersection(item.dimensions)
                else None
                for item in planned
            ]
            out = []
            for item, future, mine in zip(planned, futures, here, strict=True):
                try:
                    res = future.result()
                except BrokenProcessPool as e:
                    res = VideoScores(
                        str(item.path),
                        skipped=f"a worker process died while this video or one beside it was scored ({e}); "
                        "rerun with workers=1 to find which",
                    )
                if mine is not None and res.skipped is None:
                    res.entries.update(mine.entries)
                    res.excluded.update(mine.excluded)
                out.append(res)
                bar.update()
    finally:
        _JOB = None
        cv2.setNumThreads(cv_threads)
        bar.close()
    return out


def evaluate(
    videos_dir: str | Path,
    out_dir: str | Path,
    *,
    dimensions: list[str] | None = None,
    prompts: str | Path | list[dict[str, Any]] | dict[str, str] | None = None,
    config: EvalConfig | None = None,
    progress: bool = True,
    report: bool = True,
) -> dict[str, Any]:
    """Score the videos in ``videos_dir`` and write to ``out_dir`` (:data:`eval.vbench.OUTPUT_LAYOUT`):
    ``eval_results.json`` (VBench schema, only dimensions computed as VBench does),
    ``__vdiff__/substitute_results.json`` (the same schema, substitute methods),
    ``__vdiff__/eval_info.json`` (methods, scores, skipped videos) and ``report.html``.

    ``prompts`` is a VBench prompt suite, a ``{file name: prompt}`` map, a text file of prompts
    (a path to any of these, or the loaded object), or None to take prompts from file names.
    Returns ``{"results": <eval_results.json>, "substitutes": <substitute_results.json>,
    "info": <eval_info.json>}``.
    """
    cfg = dataclasses.replace(config or EvalConfig())
    if dimensions is not None:
        cfg.dimensions = list(dimensions)
    cfg.validate()
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"videos folder {videos_dir} does not exist")
    if isinstance(prompts, str | Path):
        prompts = load_prompts(prompts)

    # 1. Build every metric: missing weights or packages fail here, before any video is read.
    metrics: dict[str, Metric] = {}
    weights: dict[str, dict[str, Path]] = {}
    for name in dict.fromkeys(cfg.dimensions):
        with record_weights() as weights[name]:
            metrics[name] = build_metric(name, cfg)

    # 2. Plan which videos get which dimensions.
    planned, missing = plan_videos(
        videos_dir, prompts, dimensions=list(metrics), per_prompt=cfg.videos_per_prompt
    )

    # 3. Decode each video once; every metric scores the same frames (in cfg.workers processes).
    entries: dict[str, list[dict[str, Any]]] = {name: [] for name in metrics}
    excluded: dict[str, list[dict[str, str]]] = {name: [] for name in metrics}
    scored: dict[str, int] = {name: 0 for name in metrics}
    skipped: list[dict[str, str]] = []
    strips: dict[str, str] = {}
    for item, res in zip(
        planned, score_videos(planned, metrics, cfg=cfg, strip=report, progress=progress), strict=True
    ):
        if res.skipped is not None:
            skipped.append({"video_path": res.path, "reason": res.skipped})
            continue
        strips[res.path] = res.strip
        for name in item.dimensions:
            if name in res.excluded:
                excluded[name].append({"video_path": res.path, "reason": res.excluded[name]})
            elif name in res.entries:
                entry = res.entries[name]
                if entry is not None:
                    entries[name].append(entry)
                scored[name] += 1

    # 4. Aggregate as VBench does and write the results.
    files: dict[str, dict[str, Any]] = {OUTPUT_LAYOUT["results"]: {}, OUTPUT_LAYOUT["substitutes"]: {}}
    dims_info: dict[str, Any] = {}
    for name, metric in metrics.items():
        dims_info[name] = summarise(
            metric,
            entries[name],
            excluded[name],
            scored[name],
            weights=weights[name],
            resamples=cfg.bootstrap_resamples,
        )
        if dims_info[name]["aggregate"] is not None:
            entry = results_entry(dims_info[name]["aggregate"], entries[name])
            files[dims_info[name]["file"]][name] = entry
    results, substitutes = files[OUTPUT_LAYOUT["results"]], files[OUTPUT_LAYOUT["substitutes"]]
    comparable = {
        n: d["aggregate"] for n, d in dims_info.items() if d["comparable"] and d["aggregate"] is not None
    }
    everything = {n: d["aggregate"] for n, d in dims_info.items() if d["aggregate"] is not None}
    info = {
        "videos_dir": str(videos_dir),
        "mode": "custom" if prompts is None or isinstance(prompts, dict) else "vbench_standard",
        "dimensions": dims_info,
        "skipped": skipped,
        "missing": missing,
        "scores": {"leaderboard": vbench_scores(comparable), "with_substitutes": vbench_scores(everything)},
        "config": to_dict(cfg),
        "layout": dict(OUTPUT_LAYOUT),
        # NOTE: VBench's cal_final_score.py counts every absent dimension as 0 without a warning.
        "score_script_zeros": score_script_zeros(results),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / OUTPUT_LAYOUT["results"], results)
    (out_dir / OUTPUT_LAYOUT["info"]).parent.mkdir(exist_ok=True)
    atomic_write_json(out_dir / OUTPUT_LAYOUT["substitutes"], substitutes)
    atomic_write_json(out_dir / OUTPUT_LAYOUT["info"], info)
    if report:
        from eval.report import write_report

        write_report(
            out_dir / OUTPUT_LAYOUT["report"], results={**results, **substitutes}, info=info, strips=strips
        )
    return {"results": results, "substitutes": substitutes, "info": info}
