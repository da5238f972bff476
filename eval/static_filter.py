"""VBench's static filter as its own step: keep the static videos, copied to a filtered folder.

Follows ``vbench/cli/static_filter.py`` at :data:`eval.vbench.VBENCH_COMMITS` (986e8884): videos are
``sorted(glob(VIDEOS/*.mp4))``; each prompt in the scope gets at most ``STATIC_CAP`` (5) static
videos when the scope is ``temporal_flickering`` (no cap otherwise); the test is
:func:`eval.metrics.temporal.is_static` with RAFT, or a labelled weight-free flow without
``weights.raft``. Output, as VBench writes it::

    OUT/filtered_static_video.json     {prompt: {"static_count": n, "static_path": [video, ...]}}
    OUT/filtered_videos/{prompt}-{i}.mp4   the i-th static video of each prompt (copied)
    OUT/__vdiff__/static_filter_info.json  vdiff only: method, scope, unreadable videos

``vdiff eval OUT/filtered_videos --dimensions temporal_flickering`` then scores what VBench scores.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
from tqdm import tqdm

from eval.config import EvalConfig
from eval.flow import FlowFn, shared_flows
from eval.metric import UnscorableVideoError
from eval.metrics.temporal import build_flow, is_static
from eval.vbench import VBENCH_COMMITS, prompt_from_filename
from vdiff.io.files import atomic_write_json
from vdiff.io.video import VideoError

STATIC_CAP = 5
STORE_NAME = "filtered_static_video.json"
FILTERED_DIR = "filtered_videos"
INFO_FILE = "__vdiff__/static_filter_info.json"


def _full(filtered: dict[str, dict[str, Any]], path: Path, capped: bool) -> bool:
    return capped and filtered[prompt_from_filename(path)]["static_count"] >= STATIC_CAP


def scope_prompts(scope: str, videos: list[Path], suite: list[dict[str, Any]] | None) -> list[str]:
    """The prompts VBench filters for ``scope``: ``temporal_flickering`` (the suite's prompts for
    that dimension; VBench reads its own VBench_full_info.json), ``all`` (every video's prompt), or
    a JSON file listing video names or prompts."""
    if scope == "temporal_flickering":
        if suite is None:
            raise ValueError(
                "scope 'temporal_flickering' needs the VBench prompt suite (--prompts "
                "VBench_full_info.json) to know which prompts belong to temporal_flickering; "
                "or use --filter-scope all"
            )
        return [d["prompt_en"] for d in suite if "temporal_flickering" in d.get("dimension", [])]
    if scope == "all":
        return [prompt_from_filename(p) for p in videos]
    path = Path(scope)
    if not (path.is_file() and path.suffix.lower() == ".json"):
        raise ValueError(
            f"filter scope {scope!r} is not 'temporal_flickering', 'all' or an existing .json file"
        )
    names = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"filter scope {path}: expected a JSON list of video names or prompts")
    return [prompt_from_filename(n) for n in names]


def check_video(path: Path, flow: FlowFn, *, cache_bytes: int) -> tuple[bool | None, str]:
    """(static?, "") for one video, decoded once with its flows shared (:func:`eval.flow.shared_flows`);
    (None, reason) when it cannot be read or checked."""
    from eval.runner import decode

    try:
        frames, _ = decode(path)
        with shared_flows(cache_bytes):
            return is_static(frames, flow), ""
    except (VideoError, UnscorableVideoError) as e:
        return None, str(e)


_JOB: tuple[list[Path], FlowFn, int] | None = None
"""What forked workers check: set in the parent before the fork, read by the children."""


def _check_in_worker(i: int) -> tuple[bool | None, str]:
    assert _JOB is not None
    paths, flow, cache_bytes = _JOB
    return check_video(paths[i], flow, cache_bytes=cache_bytes)


def _check_all(
    paths: list[Path], flow: FlowFn, *, cfg: EvalConfig, bar: tqdm
) -> Iterator[tuple[bool | None, str]]:
    """The decisions for ``paths`` in order, from ``cfg.workers`` forked processes."""
    global _JOB
    from eval.runner import _init_worker

    _JOB = (paths, flow, cfg.flow_cache_mb * 2**20)
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ProcessPoolExecutor(
            max_workers=min(cfg.workers, len(paths)), mp_context=get_context("fork"), initializer=_init_worker
        ) as pool:
            for res in pool.map(_check_in_worker, range(len(paths))):
                bar.update()
                yield res
    finally:
        _JOB = None
        cv2.setNumThreads(cv_threads)


def run_static_filter(
    videos_dir: str | Path,
    out_dir: str | Path,
    *,
    scope: str = "temporal_flickering",
    suite: list[dict[str, Any]] | None = None,
    config: EvalConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Filter ``videos_dir`` as VBench's ``static_filter`` does and copy the kept videos to
    ``out_dir/filtered_videos``. Returns ``{"filtered": <filtered_static_video.json>, "info": ...}``.

    With ``config.workers > 1`` the videos are checked in forked processes; the cap is applied in
    VBench's order afterwards, so the result equals a 1-process run (which stops checking a prompt's
    videos once it has 5, as VBench does). Refuses an ``out_dir`` that already holds a filter result:
    nothing vdiff did not write is overwritten.
    """
    cfg = config or EvalConfig()
    cfg.validate()
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"videos folder {videos_dir} does not exist")
    target = out_dir / FILTERED_DIR
    for p in (out_dir / STORE_NAME, target):
        if p.exists():
            raise FileExistsError(f"{p} exists; name an empty --out folder for the static filter")
    flow, label, comparable = build_flow(cfg, dimension="static filter")
    # NOTE: VBench globs "*.mp4" only (case-sensitive) and sorts the full paths.
    paths = sorted(videos_dir.glob("*.mp4"), key=str)
    prompts = scope_prompts(scope, paths, suite)
    filtered: dict[str, dict[str, Any]] = {p: {"static_count": 0, "static_path": []} for p in prompts}
    capped = scope == "temporal_flickering"
    candidates = [p for p in paths if prompt_from_filename(p) in filtered]
    unreadable: list[dict[str, str]] = []
    bar = tqdm(total=len(candidates), desc="static filter", unit="video", disable=not progress)
    parallel = cfg.workers > 1 and len(candidates) > 1
    if parallel:
        decisions: Iterator[tuple[bool | None, str]] = _check_all(candidates, flow, cfg=cfg, bar=bar)
    else:
        decisions = (
            (None, "")
            if _full(filtered, path, capped)
            else check_video(path, flow, cache_bytes=cfg.flow_cache_mb * 2**20)
            for path in candidates
        )
    for path, (static, reason) in zip(candidates, decisions, strict=True):
        if not parallel:
            bar.update()
        entry = filtered[prompt_from_filename(path)]
        if _full(filtered, path, capped):
            continue
        if static is None:
            unreadable.append({"video_path": str(path), "reason": reason})
        elif static:
            entry["static_count"] += 1
            entry["static_path"].append(str(path))
    bar.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / STORE_NAME, filtered)
    target.mkdir()
    for prompt, v in filtered.items():
        for i, src in enumerate(v["static_path"]):
            shutil.copy(src, target / f"{prompt}-{i}.mp4")
    info = {
        "videos_dir": str(videos_dir),
        "scope": scope,
        "cap_per_prompt": STATIC_CAP if scope == "temporal_flickering" else None,
        "method": f"VBench static_filter.py @ {VBENCH_COMMITS['vbench/cli/static_filter.py'][:8]}, {label}",
        "comparable": comparable,
        "fewer_than_cap": [p for p, v in filtered.items() if v["static_count"] < STATIC_CAP]
        if scope == "temporal_flickering"
        else [],
        "unreadable": unreadable,
    }
    (out_dir / INFO_FILE).parent.mkdir(exist_ok=True)
    atomic_write_json(out_dir / INFO_FILE, info)
    return {"filtered": filtered, "info": info}
