"""Benchmark: `vdiff eval` (decode each video once, share flows, parallel videos) against
decoding it once per dimension.

The peer is the naive loop, which is how VBench's per-dimension scripts work: for every
dimension, decode every video again and score it. vdiff's ``eval.evaluate`` decodes each
video once, hands the frames to every requested dimension, computes each optical flow that
two dimensions share once, and with ``workers=N`` scores N videos at a time in forked
processes (timed with 1 process and with ``--workers``). Both score the same synthetic
videos (moving shapes, pans, static shots from ``data_prep.synthetic``, written as H.264 mp4)
on the weight-free dimensions (temporal_flickering, dynamic_degree, motion_smoothness; DIS
flow substitutes), with metrics built by ``eval.registry.build_metric`` from the same config,
and the script checks that both give the same scores. ``evaluate`` runs with ``report=False``
(the naive loop writes no report; a run with the HTML report is timed separately). The runs
alternate within each repeat; the ratio printed is videos/s of vdiff over the naive loop's (> 1:
vdiff is faster), in wall time and in CPU time. CPU time is this process's plus that of its
finished child processes (the workers), from ``getrusage``. The naive loop also runs with
OpenCV on one thread (as each worker does), to show how much of the CPU ratio is OpenCV's
thread pool spinning rather than work saved; that row is not in the ratio.

With model weights in the environment (``VDIFF_RAFT`` for dynamic_degree, ``VDIFF_AMT_S`` for
motion_smoothness) those dimensions run RAFT / AMT-S on ``--device`` (``bench/devices.py``; default
cpu) instead of the substitutes; on a GPU the "workers" run is one process (forked workers cannot
share it). ``--dtype`` accepts float32 only (``auto`` means float32 here): VBench runs these
models in float32, and another dtype would change the scores this benchmark checks.

    python bench/eval.py [--quick] [--videos N] [--frames N] [--size HxW] [--repeat N] [--workers N]
                         [--device cpu|cuda] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

# NOTE: run as a script, this file's folder comes first on sys.path, where "eval" would be
# this file rather than vdiff's eval package; the repository root goes first instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.devices import add_device_args, resolve  # noqa: E402
from data_prep import synthetic  # noqa: E402
from eval.config import WEIGHT_FREE_DIMENSIONS, EvalConfig  # noqa: E402
from eval.registry import UnscorableVideoError, VideoSample, build_metric  # noqa: E402
from eval.runner import decode, evaluate  # noqa: E402
from eval.vbench import prompt_from_filename  # noqa: E402

FPS = 16.0


def write_videos(folder: Path, *, count: int, frames: int, height: int, width: int) -> list[Path]:
    """``count`` synthetic mp4s: moving shapes, pans and static shots in turn (named as VBench does)."""
    folder.mkdir(parents=True, exist_ok=True)
    kw = {"num_frames": frames, "height": height, "width": width, "fps": FPS}
    paths = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            color, shape = ("red", "blue", "green", "yellow")[i % 4], ("circle", "square", "triangle")[i % 3]
            video = synthetic.moving_shapes(color, shape, "left", seed=i, **kw)
            prompt = synthetic.shape_caption(color, shape, "left")
        elif kind == 1:
            video = synthetic.pan(speed=0.25, direction=("left", "up")[i % 2], seed=i, **kw)
            prompt = "a camera panning over a textured scene"
        else:
            video = synthetic.static_shot(num_frames=frames, height=height, width=width, seed=i)
            prompt = "a still textured scene"
        paths.append(synthetic.write_video(folder / f"{prompt}-{i}.mp4", video, FPS))
    return paths


def naive_loop(paths: list[Path], dimensions: list[str], cfg: EvalConfig) -> dict[str, dict[str, float]]:
    """Per dimension, decode every video again and score it: {dimension: {video: score}}."""
    out: dict[str, dict[str, float]] = {}
    for name in dimensions:
        metric = build_metric(name, cfg)
        out[name] = {}
        for path in paths:
            frames, fps = decode(path)
            video = VideoSample(path=path, prompt=prompt_from_filename(path), frames=frames, fps=fps)
            try:
                out[name][str(path)] = metric.compute(video)["video_results"]
            except UnscorableVideoError:
                continue  # NOTE: evaluate lists it as excluded, with the reason; neither scores it
    return out


def vdiff_scores(result: dict) -> dict[str, dict[str, float]]:
    """{dimension: {video: score}} from ``evaluate``'s results and substitute results."""
    out = {}
    for key, (_, entries) in {**result["results"], **result.get("substitutes", {})}.items():
        out[key.split(":")[0]] = {e["video_path"]: e["video_results"] for e in entries}
    return out


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=20, help="synthetic videos to score")
    p.add_argument("--frames", type=int, default=32, help=f"frames per video (at {FPS:g} fps)")
    p.add_argument("--size", default="144x256", help="video size HxW")
    p.add_argument("--repeat", type=int, default=3, help="runs of each; the median is reported")
    p.add_argument("--workers", type=int, default=2, help="processes for the parallel vdiff eval run")
    p.add_argument("--quick", action="store_true", help="4 videos of 16 frames at 72x128, 1 repeat")
    add_device_args(p)
    args = p.parse_args(argv)
    if args.dtype not in ("auto", "float32"):
        p.error(
            f"--dtype {args.dtype}: vdiff eval runs VBench's models in float32, as VBench does; use float32"
        )
    if args.device == "cuda":
        resolve(args, p)  # NOTE: a one-line exit 2 when torch sees no GPU
    count, frames, size, repeat = (
        (4, 16, "72x128", 1) if args.quick else (args.videos, args.frames, args.size, args.repeat)
    )
    height, _, width = size.partition("x")
    dims = list(WEIGHT_FREE_DIMENSIONS)
    dev = args.device
    cfg = EvalConfig(dimensions=dims, device=dev)
    # NOTE: forked workers need device=cpu; on a GPU the "parallel" run is one process as well.
    workers = args.workers if dev == "cpu" else 1
    par = f"vdiff eval, {workers} workers"
    cfg_par = EvalConfig(dimensions=dims, workers=workers, device=dev)
    unshared = "vdiff eval, no flow sharing"
    configs = {
        "vdiff eval": cfg,
        par: cfg_par,
        unshared: EvalConfig(dimensions=dims, flow_cache_mb=0, device=dev),
    }

    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp_str:
        tmp = Path(tmp_str)
        paths = write_videos(tmp / "videos", count=count, frames=frames, height=int(height), width=int(width))
        print(
            f"machine: {len(os.sched_getaffinity(0))} cores; {count} videos, {frames} frames {size} at "
            f"{FPS:g} fps; dimensions {', '.join(dims)} (flow: {cfg.flow}); median of {repeat}; "
            f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
        for name in dims:
            # NOTE: untimed: the first build imports the metric modules (torch)
            print(f"  {name}: {build_metric(name, cfg).method} on {dev}")
        naive1 = "naive, 1 OpenCV thread"
        times: dict[str, list[tuple[float, float]]] = {
            k: [] for k in (*configs, "naive", naive1, "with report")
        }
        scores = {}
        for r in range(repeat):
            runs = [*configs, "naive", naive1]
            for which in runs if r % 2 == 0 else runs[::-1]:
                wall, cpu = time.perf_counter(), cpu_seconds()
                if which == "naive":
                    scores[which] = naive_loop(paths, dims, cfg)
                elif which == naive1:
                    threads = cv2.getNumThreads()
                    cv2.setNumThreads(1)
                    scores[which] = naive_loop(paths, dims, cfg)
                    cv2.setNumThreads(threads)
                else:
                    res = evaluate(
                        tmp / "videos",
                        tmp / f"out{r}-{list(configs).index(which)}",
                        config=configs[which],
                        progress=False,
                        report=False,
                    )
                    scores[which] = vdiff_scores(res)
                times[which].append((time.perf_counter() - wall, cpu_seconds() - cpu))
                print(
                    f"run {r} {which}: {times[which][-1][0]:.2f} s (CPU {times[which][-1][1]:.2f} s)",
                    flush=True,
                )
            wall, cpu = time.perf_counter(), cpu_seconds()
            evaluate(tmp / "videos", tmp / f"rep{r}", config=cfg_par, progress=False, report=True)
            times["with report"].append((time.perf_counter() - wall, cpu_seconds() - cpu))

        if not scores[par] == scores[unshared] == scores["vdiff eval"]:
            print(f"vdiff eval runs ({', '.join(configs)}) gave different scores")
            return 1
        if any(set(scores["naive"][d]) != set(scores["vdiff eval"].get(d, {})) for d in dims):
            print("vdiff eval and the naive loop scored different videos")
            return 1
        diff = max(
            abs(float(np.mean(scores["vdiff eval"][d][v])) - float(np.mean(scores["naive"][d][v])))
            for d in scores["naive"]
            for v in scores["naive"][d]
        )
        if diff > 1e-9:
            print(f"vdiff eval and the naive loop disagree: max score difference {diff:.3g}")
            return 1
        wall = {k: statistics.median(w for w, _ in ts) for k, ts in times.items()}
        cpu = {k: statistics.median(c for _, c in ts) for k, ts in times.items()}
        print()
        print("| method | wall s | CPU s | videos/s (wall) |")
        print("|---|---|---|---|")
        for label, key in (
            ("vdiff eval, 1 process, decode once, no flow sharing (before)", unshared),
            ("vdiff eval, 1 process (decode once, shared flows)", "vdiff eval"),
            (f"vdiff eval, {workers} workers", par),
            ("naive loop (decode per dimension)", "naive"),
            ("naive loop, OpenCV on 1 thread (not in the ratio)", naive1),
            (f"vdiff eval, {workers} workers + report.html (not in the ratio)", "with report"),
        ):
            print(f"| {label} | {wall[key]:.2f} | {cpu[key]:.2f} | {count / wall[key]:.2f} |")
        for key in configs:
            print(
                f"ratio (videos/s, {key} / naive): {wall['naive'] / wall[key]:.2f}x wall, "
                f"{cpu['naive'] / cpu[key]:.2f}x CPU"
            )
        print(f"scores identical to the naive loop (max diff {diff:.1g}) and across worker counts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
