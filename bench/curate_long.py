"""Benchmark: `vdiff curate` on long videos: peak memory per worker and wall time against hours of input.

A one-minute synthetic segment (textured pans, hard cuts every 4-9 s, a static shot and a
whip pan so every filter fires) is written once and concatenated losslessly (ffmpeg's concat
demuxer, ``-c copy``) into videos of each requested length. Each is curated alone with one
worker, from cold, as a command-line process; the figures are its wall time and the peak
resident memory of the largest process (``ru_maxrss`` of the waited-for children: the worker).
Linear scaling shows as a constant wall time per hour of input.

    python bench/curate_long.py [--hours 0.5 1 2] [--size 320x180] [--fps 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_prep import synthetic as S


def segment(path: Path, *, width: int, height: int, fps: float) -> Path:
    """A 60 s synthetic segment with cuts, as H.264 mp4."""
    lengths = [6, 9, 4, 7, 5, 8, 6, 9, 6]  # seconds, 60 in all
    scenes = []
    for i, sec in enumerate(lengths):
        n = int(sec * fps)
        if i == 3:
            scenes.append(S.static_shot(num_frames=n, height=height, width=width, seed=i))
        elif i == 6:
            scenes.append(S.whip_pan(num_frames=n, height=height, width=width, fps=fps, seed=i))
        else:
            direction = ("left", "right", "up", "down")[i % 4]
            speed = 0.1 + 0.05 * (i % 4)
            scenes.append(
                S.pan(
                    num_frames=n,
                    height=height,
                    width=width,
                    fps=fps,
                    seed=i,
                    speed=speed,
                    direction=direction,
                )
            )
    frames, _ = S.hard_cuts(scenes)
    return S.write_video(path, frames, fps, crf=23)


def concatenate(seg: Path, minutes: int, out: Path) -> Path:
    """``minutes`` copies of the one-minute ``seg`` in one mp4, without re-encoding."""
    listing = out.with_suffix(".txt")
    listing.write_text("".join(f"file '{seg}'\n" for _ in range(minutes)))
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy"]
    subprocess.run([*cmd, str(out)], check=True)
    return out


PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)
"""Runs a command and prints the peak RSS (KiB) of its largest descendant: a fresh figure per run."""


def curate(video: Path, out: Path, code: Path) -> tuple[float, float, dict]:
    """(wall s, peak RSS MiB of the largest process, report) of one `vdiff curate` run, one worker."""
    cmd = [sys.executable, "-m", "pipelines.curate", str(video), "--out", str(out), "--workers", "1"]
    cmd += ["--no-progress", "caption.method=none"]
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", PEAK, *cmd], check=True, capture_output=True, cwd=code)
    wall = time.perf_counter() - t0
    peak_mib = int(res.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    return wall, peak_mib, json.loads((out / "report.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--size", default="320x180", help="WxH of the synthetic video")
    p.add_argument("--fps", type=float, default=10.0)
    here = Path(__file__).resolve().parents[1]
    p.add_argument("--code", type=Path, default=here, help="checkout whose `pipelines.curate` runs")
    args = p.parse_args(argv)
    w, h = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench_long_") as tmp_str:
        tmp = Path(tmp_str)
        seg = segment(tmp / "segment.mp4", width=w, height=h, fps=args.fps)
        print(f"segment: 60 s of {w}x{h} at {args.fps:g} fps ({seg.stat().st_size / 2**20:.1f} MiB)")
        print("| input | frames | wall s | s per hour of input | peak RSS MiB (worker) | clips | kept |")
        print("|---|---|---|---|---|---|---|")
        for hours in sorted(args.hours):
            minutes = round(hours * 60)
            video = concatenate(seg, minutes, tmp / f"long_{minutes}.mp4")
            wall, peak, report = curate(video, tmp / f"out_{minutes}", args.code)
            frames = int(minutes * 60 * args.fps)
            cells = [f"{hours:g} h", frames, f"{wall:.0f}", f"{wall / hours:.0f}", f"{peak:.0f}"]
            cells += [report["clips"], report["kept"]]
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)
            video.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
