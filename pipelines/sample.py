"""``vdiff sample``: text -> video with a vdiff training run or a diffusers-format Wan2.1 folder.

    vdiff sample --model RUN_OR_DIR (--prompt TEXT | --prompts FILE) --out DIR [key=value ...]
    torchrun --nproc_per_node=2 -m pipelines.sample ... parallel.cfg=2

Videos are written as ``DIR/{prompt}-{i}.mp4`` (VBench's naming, so ``vdiff eval DIR`` scores
the folder directly), with the resolved config in ``DIR/sample_config.yaml``. This file is the
command line only: prompts, file names and process setup. The sampling engine (the denoising
loop, guidance, step caching, the attention policy per step, model loading) is
:mod:`vdiff.sampling`.

Determinism: video ``i`` of prompt ``p`` starts from noise drawn by a CPU generator seeded
with ``seed + p * videos_per_prompt + i``, so a video does not depend on the batch it was
sampled in, on the number of devices, or on which other prompts were given.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vdiff.config import ConfigError, describe, load_config, parse_override, save_config, split_overrides
from vdiff.errors import EXPECTED_ERRORS, report_error
from vdiff.parallel.distributed import destroy_distributed
from vdiff.sampling import SampleConfig, VideoPipeline, load_pipeline, setup_distributed, to_uint8
from vdiff.sampling.loading import with_student_settings


def read_prompts(prompt: Sequence[str] | None, prompts_file: str | None) -> list[str]:
    """Prompts from ``--prompt`` words and/or a ``--prompts`` file (one a line, or a VBench JSON suite)."""
    from eval.vbench import load_prompts

    out = list(prompt or [])
    if prompts_file:
        data = load_prompts(prompts_file)
        if isinstance(data, dict):
            raise ConfigError(
                f"--prompts {prompts_file}: a {{file: prompt}} map names files, not prompts; "
                "give a text file with one prompt a line or a VBench suite JSON"
            )
        out += [d["prompt_en"] for d in data]
    out = list(dict.fromkeys(p.strip() for p in out if p.strip()))  # NOTE: VBench names must be unique
    if not out:
        raise ConfigError("no prompts: pass --prompt TEXT or --prompts FILE")
    return out


@dataclass
class VideoJob:
    """One video to write: sample ``index`` of ``prompt``, from noise seeded ``seed``."""

    prompt: str
    index: int
    seed: int
    name: str
    """VBench file name ``{prompt}-{index}.mp4``"""


def video_jobs(prompts: Sequence[str], cfg: SampleConfig) -> list[VideoJob]:
    """Every video of a run in order; a prompt that cannot be a file name fails here, before sampling."""
    from eval.vbench import vbench_video_name

    jobs = []
    for k, prompt in enumerate(prompts):
        for i in range(cfg.videos_per_prompt):
            try:
                name = vbench_video_name(prompt, i)
            except ValueError as e:
                raise ConfigError(f"{e}; rephrase that prompt") from e
            # NOTE: most file systems cap a name at 255 bytes; VBench names are the whole prompt.
            if len(name.encode()) > 255:
                raise ConfigError(
                    f"prompt {prompt[:60]!r}... is {len(prompt.encode())} bytes; its VBench file name "
                    f"{prompt[:20]!r}...-{i}.mp4 exceeds the 255-byte file-name limit: shorten the prompt"
                )
            jobs.append(VideoJob(prompt, i, cfg.seed + k * cfg.videos_per_prompt + i, name))
    return jobs


def sample_to_folder(
    pipe: VideoPipeline, prompts: Sequence[str], cfg: SampleConfig, out: Path, *, rank: int = 0
) -> list[Path]:
    """Sample ``cfg.videos_per_prompt`` videos of each prompt into ``out`` (rank 0 writes); return paths."""
    from vdiff.io.video import write_mp4

    jobs = video_jobs(prompts, cfg)
    written = []
    bar = tqdm(total=len(jobs), desc="videos", disable=not (cfg.progress and rank == 0))
    for start in range(0, len(jobs), cfg.batch_size):
        batch = jobs[start : start + cfg.batch_size]
        videos = pipe(
            [j.prompt for j in batch],
            seeds=[j.seed for j in batch],
            progress=cfg.progress and rank == 0,
            **cfg.loop_options(),
        )  # (B, 3, T, H, W)
        for job, video in zip(batch, videos):
            path = out / job.name
            if rank == 0:
                write_mp4(path, to_uint8(video), cfg.fps)
                if cfg.save_arrays:
                    np.save(path.with_suffix(".npy"), video.permute(1, 2, 3, 0).float().cpu().numpy())
            written.append(path)
        bar.update(len(batch))
    bar.close()
    return written


def read_yaml_keys(path: str | None) -> list[str]:
    """The top-level keys of a ``--config`` file (none without one)."""
    import yaml

    if not path or not Path(path).is_file():
        return []
    data = yaml.safe_load(Path(path).read_text())
    return list(data) if isinstance(data, dict) else []


def _parser() -> argparse.ArgumentParser:
    keys = "\n".join("  " + line for line in describe(SampleConfig))
    p = argparse.ArgumentParser(
        prog="vdiff sample",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Text -> video; writes DIR/{prompt}-{i}.mp4 (VBench naming) and DIR/sample_config.yaml.",
        epilog=f"config keys (key=value):\n{keys}",
    )
    p.add_argument(
        "--model", required=True, help="vdiff training run, vdiff model folder or diffusers Wan2.1 folder"
    )
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts", help="text file with one prompt a line, or a VBench suite JSON")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="YAML config (e.g. configs/sample.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``vdiff sample``; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options = {"--model": 1, "--prompt": 1, "--prompts": 1, "--out": 1, "--config": 1}
    words, overrides = split_overrides(argv, value_options=options)
    args = _parser().parse_args(words)
    out = Path(args.out)
    try:
        cfg = load_config(SampleConfig, args.config, overrides)
        # NOTE: a distilled student run brings its step count, grid and guidance 1; keys the user gives win.
        given = {parse_override(o)[0][0] for o in overrides} | set(read_yaml_keys(args.config))
        cfg, student = with_student_settings(cfg, args.model, given=given)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; name a folder for the videos")
        prompts = read_prompts(args.prompt, args.prompts)
        video_jobs(prompts, cfg)
        rank, groups = setup_distributed(cfg.parallel)
        if student and rank == 0:
            print(f"distilled student run: {', '.join(f'{k}={v}' for k, v in student.items())}", flush=True)
        pipe = load_pipeline(args.model, cfg, groups=groups)
    except EXPECTED_ERRORS as e:
        return report_error("vdiff sample", e)
    t0 = time.perf_counter()
    try:
        paths = sample_to_folder(pipe, prompts, cfg, out, rank=rank)
        if rank == 0:
            save_config(cfg, out / "sample_config.yaml")
    except OSError as e:  # NOTE: disk full, permission: the environment's failure, naming the path
        code = report_error("vdiff sample", e, where=out) if rank == 0 else 1
        destroy_distributed()
        return code
    if rank == 0:
        print(f"wrote {len(paths)} videos to {out} in {time.perf_counter() - t0:.1f} s")
    # NOTE: barrier first (destroy_distributed): once a rank of the 4-rank cfg x ulysses test
    # aborted at exit ("terminate called without an active exception") when it tore gloo down
    # while rank 0 was still writing; the training pipeline leaves the same way.
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
