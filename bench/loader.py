"""Benchmark: does vdiff's data loader keep up with training? ShardLoader vs the training step.

The peer is the training step the loader feeds, at the batch size, clip size and model of
``configs/tiny.yaml`` and ``configs/demo.yaml``. Two shard sets are read:

* curated (raw): synthetic clips (moving shapes, 2 s at 24 fps, 144x256 by default: the size
  ``vdiff curate --samples`` keeps) packed by curate's own shard writer
  (``data_prep.shards.write_shards``: ``<key>.mp4`` + ``<key>.json``, 8 clips a shard); the
  loader decodes and resizes each clip, and the step then runs the autoencoder and the text
  encoder before the model, as ``pipelines.train`` does on raw shards;
* cached: the same clips through ``pipelines.cache.cache`` with the config's data, vae and
  text sections; the loader reads latents and text embeddings, the step runs the model only.

One step is what ``pipelines.train`` does per batch: (encoders,) flow-matching noise,
forward, MSE loss, backward, gradient clipping, ``optimizer.step()``. Loader batches and
training steps alternate; the table gives samples/s of each (medians) and their ratio
(loader / step >= 1: the loader keeps up).

NOTE: ShardLoader decodes in the training process (it has no worker processes), so its time
adds to the step's rather than overlapping it; the table also gives that share of the time.

    python bench/loader.py [--quick] [--repeat N] [--clips N] [--size HxW]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from data_prep import synthetic
from data_prep.shards import ShardSample, write_shards
from vdiff.config import load_config
from vdiff.data import DataConfig, ShardLoader
from vdiff.diffusion import add_noise, sigma_to_timestep, velocity_target
from vdiff.encoders import build_text_encoder, build_vae
from vdiff.io.video import encode_mp4
from vdiff.models import build_model
from vdiff.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"tiny": "tiny.yaml", "demo": "demo.yaml"}
"""config name -> its file in configs/"""
SHAPES = [
    (c, s, d)
    for c in ("red", "blue", "yellow", "green")
    for s in ("circle", "square")
    for d in ("left", "up")
]


def config_path(name: str) -> Path:
    """``configs/<file>`` of a config name; a clear error if it is not there."""
    path = ROOT / "configs" / CONFIGS[name]
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; bench/loader.py reads the repository's configs/")
    return path


def write_curated(folder: Path, *, clips: int, height: int, width: int, fps: float = 24.0) -> Path:
    """``clips`` synthetic clips (2 s) as curated shards in ``folder/shards``; return ``folder``."""
    samples = []
    for i in range(clips):
        color, shape, direction = SHAPES[i % len(SHAPES)]
        frames = synthetic.moving_shapes(
            color, shape, direction, num_frames=int(2 * fps), height=height, width=width, fps=fps, seed=i
        )  # (T, H, W, 3)
        mp4 = encode_mp4(frames, fps)
        meta = {
            "caption": synthetic.shape_caption(color, shape, direction),
            "fps": fps,
            "num_frames": len(frames),
            "height": height,
            "width": width,
        }
        samples.append(ShardSample(clip_id=f"clip-{i:04d}", load_mp4=lambda b=mp4: b, meta=meta))
    write_shards(samples, folder / "shards", samples_per_shard=8)
    return folder


def write_cached(raw: Path, out: Path, cfg: Any) -> Path:
    """``vdiff cache`` of ``raw`` with the training config's data, vae and text sections."""
    from pipelines.cache import CacheConfig, cache

    data = dataclasses.replace(cfg.data, path=str(raw))
    return cache(CacheConfig(data=data, vae=cfg.vae, text=cfg.text, out=str(out), device="cpu"))


def train_step(cfg: Any, *, cached: bool) -> Callable[[dict[str, Any]], None]:
    """One training step on a loader batch, as pipelines.train runs it (fp32, CPU, one process)."""
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    optimizer = build_optimizer(model, cfg.optim)
    vae = None if cached else build_vae(cfg.vae)
    text = None if cached else build_text_encoder(cfg.text)
    g = torch.Generator().manual_seed(0)

    def step(batch: dict[str, Any]) -> None:
        with torch.no_grad():
            if cached:
                x0, context = batch["latents"], batch["context"]  # (B, C, T', H', W'), (B, L, D)
            else:
                x0, context = vae.encode(batch["video"]).float(), text.encode(batch["caption"])
        sigma = torch.rand(len(x0), generator=g)  # (B,)
        noise = torch.randn(x0.shape, generator=g)
        pred = model(add_noise(x0, noise, sigma), sigma_to_timestep(sigma), context)
        loss = F.mse_loss(pred.float(), velocity_target(x0, noise))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()

    return step


def measure(
    batches: Iterator[dict[str, Any]], step: Callable[[dict[str, Any]], None], *, repeat: int
) -> tuple[list[float], list[float]]:
    """Seconds per loader batch and per training step, alternating, after one untimed of each."""
    step(next(batches))
    load_s, step_s = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        step(batch)
        t2 = time.perf_counter()
        load_s.append(t1 - t0)
        step_s.append(t2 - t1)
    return load_s, step_s


def main(argv: list[str] | None = None) -> int:
    from pipelines.train import TrainConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,demo", help=f"comma-separated, of {sorted(CONFIGS)}")
    p.add_argument("--repeat", type=int, default=12, help="timed batches/steps; medians are reported")
    p.add_argument("--clips", type=int, default=32, help="clips in the shard set")
    p.add_argument("--size", default="144x256", help="clip size HxW of the curated shards")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    p.add_argument("--quick", action="store_true", help="tiny config only, 8 clips, 3 repeats")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    names = ["tiny"] if args.quick else args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}")
    repeat, clips = (3, 8) if args.quick else (args.repeat, args.clips)
    height, _, width = args.size.partition("x")

    print(
        f"machine: {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {clips} clips {args.size} at 24 fps; median of {repeat}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp_str:
        tmp = Path(tmp_str)
        raw = write_curated(tmp / "curated", clips=clips, height=int(height), width=int(width))
        for name in names:
            path = config_path(name)
            cfg = load_config(TrainConfig, path, [])
            cached = write_cached(raw, tmp / f"cached_{name}", cfg)
            for kind, data_path in (("curated", raw), ("cached", cached)):
                data: DataConfig = dataclasses.replace(cfg.data, path=str(data_path))
                batch = cfg.train.batch_size
                loader = ShardLoader(data, batch_size=batch, seed=0)
                load_s, step_s = measure(
                    iter(loader), train_step(cfg, cached=kind == "cached"), repeat=repeat
                )
                load, stepm = statistics.median(load_s), statistics.median(step_s)
                rows.append(
                    (name, path.name, kind, batch, batch / load, batch / stepm, load / (load + stepm))
                )
                print(
                    f"{name} {kind}: loader {batch / load:.1f} samples/s, step {batch / stepm:.1f} samples/s",
                    flush=True,
                )

    print()
    print(
        "| config | shards | batch | loader samples/s | train step samples/s | ratio loader/step "
        "| loader share of step+load |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, file, kind, batch, lrate, srate, share in rows:
        print(
            f"| {name} ({file}) | {kind} | {batch} | {lrate:.1f} | {srate:.1f} | {lrate / srate:.2f} "
            f"| {share:.0%} |"
        )
    print("ratio >= 1: the loader delivers samples faster than the step consumes them.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
