"""Benchmark: a distilled few-step student against its teacher's default guided sampler, in one run.

Both sample the demo's held-out combinations (``DIR/world/world.json``) with the same prompts and
noise seeds as ``vdiff demo`` (``samples_per_combo`` videos each, batched per prompt) through
``pipelines.sample.sample_to_folder`` (the ``vdiff sample`` code path): the teacher with its
default guided sampler (Euler, ``--steps`` 20, guidance 4, shift 3: two forwards per step), the
student with what its run says (``vdiff sample``'s student mode: K Euler steps on the uniform
grid, guidance 1: one forward per step). They alternate ``--repeat`` times (the order flips every
repeat); the figures are each one's median wall and CPU time, the speedup teacher / student, and
the demo metrics (colour, shape, direction accuracy) of each one's videos, and ``teacher_l1``: the
mean absolute pixel difference (0-1) between each video and the teacher's from the same prompt and
noise seed (decoded frames), i.e. how close a few-step sampler lands to the teacher's many-step one.

    python bench/distill.py --demo runs/demo [--student runs/demo/distill] [--repeat 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# NOTE: run as a script, this file's folder comes first on sys.path, where "eval" would be
# bench/eval.py rather than vdiff's eval package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.devices import machine_line  # noqa: E402


def sample_config(overrides: list[str], *, student: Path | None) -> Any:
    from vdiff.config import load_config
    from vdiff.sampling import SampleConfig
    from vdiff.sampling.loading import with_student_settings

    cfg = load_config(SampleConfig, None, overrides)
    if student is not None:
        cfg, _ = with_student_settings(cfg, student)
    return cfg


def run(args: argparse.Namespace) -> dict[str, Any]:
    from data_prep.demo_world import PALETTE, load_world
    from eval.demo_metrics import Label, score_videos
    from eval.vbench import vbench_video_name
    from pipelines.sample import sample_to_folder
    from vdiff.sampling import load_pipeline

    demo = Path(args.demo)
    student_run = Path(args.student) if args.student else demo / "distill"
    held = [(h["color"], h["shape"], h["direction"]) for h in load_world(demo / "world")["held_out"]]
    prompts = [f"a {c} {s} moving {d}" for c, s, d in held]
    size = [f"frames={args.frames}", f"height={args.size}", f"width={args.size}", f"fps={args.fps}"]
    common = [*size, "seed=0", f"videos_per_prompt={args.per_combo}", f"batch_size={args.per_combo}"]
    common.append("progress=false")
    teacher_cfg = sample_config(
        [*common, f"steps={args.steps}", f"guidance={args.guidance}", f"shift={args.shift}"], student=None
    )
    student_cfg = sample_config(common, student=student_run)
    teacher_pipe = load_pipeline(demo / "train", teacher_cfg)
    pipes = {
        "teacher": (teacher_pipe, teacher_cfg),
        "student": (load_pipeline(student_run, student_cfg), student_cfg),
    }
    if args.baselines:
        # NOTE: the undistilled teacher on the student's grid: what K steps give without distillation.
        k = student_cfg.steps
        for name, guidance in (("teacher_k_guided", args.guidance), ("teacher_k", 1.0)):
            cfg = sample_config(
                [*common, f"steps={k}", f"guidance={guidance}", f"shift={student_cfg.shift}"], student=None
            )
            cfg.schedule = "uniform"
            pipes[name] = (teacher_pipe, cfg)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in pipes}
    scores: dict[str, dict[str, float]] = {}
    names = [vbench_video_name(p, i) for p in prompts for i in range(args.per_combo)]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            order = list(pipes) if r % 2 == 0 else list(reversed(pipes))
            for name in order:
                pipe, cfg = pipes[name]
                out = Path(tmp) / name
                w0, c0 = time.perf_counter(), time.process_time()
                sample_to_folder(pipe, prompts, cfg, out)
                times[name].append((time.perf_counter() - w0, time.process_time() - c0))
                if name not in scores:
                    videos = [
                        (out / vbench_video_name(p, i), Label(*combo))
                        for p, combo in zip(prompts, held)
                        for i in range(args.per_combo)
                    ]
                    got = score_videos(videos, palette=PALETTE)
                    scores[name] = {
                        k: got[k] for k in ("color_accuracy", "shape_accuracy", "direction_accuracy")
                    }
        for name in pipes:
            scores[name]["teacher_l1"] = teacher_l1(Path(tmp) / name, Path(tmp) / "teacher", names)
    result: dict[str, Any] = {"machine": machine_line(torch.device("cpu"), torch.float32)}
    for name, (_, cfg) in pipes.items():
        result[name] = {
            "steps": cfg.steps,
            "guidance": cfg.guidance,
            "schedule": cfg.schedule,
            "wall_s": statistics.median(t[0] for t in times[name]),
            "cpu_s": statistics.median(t[1] for t in times[name]),
            **scores[name],
        }
    result["speedup_wall"] = result["teacher"]["wall_s"] / result["student"]["wall_s"]
    result["speedup_cpu"] = result["teacher"]["cpu_s"] / result["student"]["cpu_s"]
    result["videos"] = len(prompts) * args.per_combo
    return result


def teacher_l1(folder: Path, teacher: Path, names: list[str]) -> float:
    """Mean |frame - teacher's frame| / 255 over the videos ``names`` in both folders (decoded)."""
    import numpy as np

    from vdiff.io.video import read_frames

    def frames(path: Path) -> np.ndarray:
        return read_frames(path).astype(np.float64)  # (T, H, W, 3)

    diffs = [np.abs(frames(folder / n) - frames(teacher / n)).mean() for n in names]
    return float(np.mean(diffs)) / 255.0


def pipes_order(result: dict[str, Any]) -> list[str]:
    return [n for n in ("teacher", "student", "teacher_k_guided", "teacher_k") if n in result]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo", required=True, help="a vdiff demo folder (world/, train/)")
    p.add_argument("--student", help="the student run (default: DEMO/distill)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="the teacher's steps (the demo's default)")
    p.add_argument("--guidance", type=float, default=4.0, help="the teacher's guidance (the demo's default)")
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--per-combo", type=int, default=4, help="videos per held-out combination")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--fps", type=float, default=4.0)
    p.add_argument(
        "--baselines",
        action="store_true",
        help="also score the undistilled teacher on the student's K-step grid, with and without guidance",
    )
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    result = run(args)
    print(result["machine"])
    for name in pipes_order(result):
        r = result[name]
        print(
            f"{name:16s} {r['steps']:3d} steps, guidance {r['guidance']:g}, {r['schedule']:8s} grid: "
            f"{r['wall_s']:7.2f} s wall, {r['cpu_s']:7.2f} s CPU for {result['videos']} videos; colour "
            f"{r['color_accuracy']:.2f}, shape {r['shape_accuracy']:.2f}, "
            f"direction {r['direction_accuracy']:.2f}; L1 to the teacher's videos {r['teacher_l1']:.4f}"
        )
    print(
        f"speedup (teacher / student): {result['speedup_wall']:.2f}x wall, {result['speedup_cpu']:.2f}x CPU"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
