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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from eval.config import EvalConfig
from eval.registry import Metric, UnscorableVideoError, VideoSample, build_metric
from eval.vbench import (
    VIDEO_EXTENSIONS,
    load_prompts,
    prompt_from_filename,
    results_entry,
    vbench_scores,
    vbench_video_name,
)
from vdiff.config import to_dict
from vdiff.io.files import atomic_write_json
from vdiff.io.video import VideoError, probe, read_frames

SUBSTITUTE_SUFFIX = ":substitute"


@dataclass
class PlannedVideo:
    """A video to score, its prompt and the dimensions it is scored on."""

    path: Path
    prompt: str
    dimensions: list[str] = field(default_factory=list)


def results_key(metric: Metric) -> str:
    """The ``eval_results.json`` key: the VBench name, or ``name:substitute`` for substitute methods.

    NOTE: VBench's score scripts look dimensions up by name, so a substitute stored under another
    key can never be mixed into a leaderboard-comparable score by them.
    """
    return metric.name if metric.comparable else metric.name + SUBSTITUTE_SUFFIX


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
    metric: Metric, entries: list[dict[str, Any]], excluded: list[dict[str, str]], scored: int
) -> dict[str, Any]:
    """One dimension's ``eval_info.json`` record: its results key, method, aggregate and exclusions."""
    aggregate: float | None = None
    if metric.set_level:
        try:
            aggregate = metric.finalize()
        except UnscorableVideoError as e:
            excluded.append({"video_path": "", "reason": str(e)})
    elif entries:
        aggregate = metric.aggregate(entries)
    return {
        "key": results_key(metric),
        "method": metric.method,
        "comparable": metric.comparable,
        "aggregate": aggregate,
        "num_videos": scored,
        "excluded": [*excluded, *metric.skipped],
    }


def decode(path: Path) -> tuple[np.ndarray, float]:
    """All frames (T, H, W, 3) uint8 and the fps; raise VideoError for unreadable or empty videos."""
    meta = probe(path)
    frames = read_frames(path)
    if len(frames) == 0:
        raise VideoError(f"{path}: no frames decoded")
    return frames, meta.fps


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
    """Score the videos in ``videos_dir`` and write ``eval_results.json`` (VBench schema),
    ``eval_info.json`` (methods, scores, skipped videos) and ``report.html`` to ``out_dir``.

    ``prompts`` is a VBench prompt suite, a ``{file name: prompt}`` map, a text file of prompts
    (a path to any of these, or the loaded object), or None to take prompts from file names.
    Returns ``{"results": <eval_results.json>, "info": <eval_info.json>}``.
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
    metrics = {name: build_metric(name, cfg) for name in dict.fromkeys(cfg.dimensions)}

    # 2. Plan which videos get which dimensions.
    planned, missing = plan_videos(
        videos_dir, prompts, dimensions=list(metrics), per_prompt=cfg.videos_per_prompt
    )

    # 3. Decode each video once; every metric scores the same frames.
    entries: dict[str, list[dict[str, Any]]] = {name: [] for name in metrics}
    excluded: dict[str, list[dict[str, str]]] = {name: [] for name in metrics}
    scored: dict[str, int] = {name: 0 for name in metrics}
    skipped: list[dict[str, str]] = []
    strips: dict[str, str] = {}
    for item in tqdm(planned, desc="vdiff eval", unit="video", disable=not progress):
        try:
            frames, fps = decode(item.path)
        except VideoError as e:
            skipped.append({"video_path": str(item.path), "reason": str(e)})
            continue
        video = VideoSample(path=item.path, prompt=item.prompt, frames=frames, fps=fps)
        strips[str(item.path)] = frame_strip(frames, cfg.report_frames)
        for name in item.dimensions:
            metric = metrics[name]
            try:
                if metric.set_level:
                    metric.accumulate(video)
                else:
                    entries[name].append({"video_path": str(item.path), **metric.compute(video)})
                scored[name] += 1
            except UnscorableVideoError as e:
                excluded[name].append({"video_path": str(item.path), "reason": str(e)})

    # 4. Aggregate as VBench does and write the results.
    results: dict[str, Any] = {}
    dims_info: dict[str, Any] = {}
    for name, metric in metrics.items():
        dims_info[name] = summarise(metric, entries[name], excluded[name], scored[name])
        if dims_info[name]["aggregate"] is not None:
            results[dims_info[name]["key"]] = results_entry(dims_info[name]["aggregate"], entries[name])
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
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "eval_results.json", results)
    atomic_write_json(out_dir / "eval_info.json", info)
    if report:
        from eval.report import write_report

        write_report(out_dir / "report.html", results=results, info=info, strips=strips)
    return {"results": results, "info": info}
