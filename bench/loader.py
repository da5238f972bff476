"""Benchmark: does vdiff's data loader keep up with training? ShardLoader vs the training step.

The peer is the training step the loader feeds, at the batch size, clip size and model of
``configs/tiny.yaml`` and ``configs/demo.yaml``. Two shard sets are read:

* curated (raw): synthetic clips (moving shapes, 2 s at 24 fps, 144x256 by default: the size
  ``vdiff curate --samples`` keeps) packed by curate's own shard writer
  (``data_prep.shards.write_shards``: ``<key>.mp4``, ``.txt``, ``.json``, 8 clips a shard); the
  loader decodes and resizes each clip, and the step then runs the autoencoder and the text
  encoder before the model, as ``pipelines.train`` does on raw shards;
* cached: the same clips through ``pipelines.cache.cache`` with the config's data, vae and
  text sections; the loader reads latents and text embeddings, the step runs the model only.

One step is what ``pipelines.train`` does per batch: (encoders,) flow-matching noise,
forward, MSE loss, backward, gradient clipping, ``optimizer.step()``. Loader batches and
training steps alternate as in training; each shard set is read with ``data.num_workers`` 0
(decoding in the training process, between steps) and N (worker processes decoding while the
step runs), in rounds whose order flips, so both settings see the same machine load.

Per row: the wait for a batch (wall, median), the step's samples/s alone, the samples/s of the
load + step loop (what training gets) and its ratio to the step alone (1.0: the loader costs
training nothing), and CPU time per sample: the training process's while it waits for a
batch, and the worker processes' (all they used, start-up included, per sample they read:
the ones handed out plus the ones in flight at the end), and the step's. CPU time is steadier
than wall time on a shared machine.

    python bench/loader.py [--quick] [--repeat N] [--rounds N] [--workers N] [--clips N] [--size HxW]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from data_prep import synthetic
from data_prep.shards import ShardSample, write_shards
from vdiff.config import load_config
from vdiff.data import ShardLoader
from vdiff.diffusion import add_noise, sigma_to_timestep, velocity_target
from vdiff.encoders import build_text_encoder, build_vae
from vdiff.io.video import encode_mp4
from vdiff.models import build_model
from vdiff.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
PREFETCH_FACTOR = 2
"""batches each worker keeps in flight (vdiff.data.workers.Prefetcher's default)"""
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


class EveryKindOnWorkers(ShardLoader):
    """ShardLoader that sends cached shards through workers too (to measure what skipping them saves)."""

    @property
    def uses_workers(self) -> bool:
        return self.cfg.num_workers > 0


@dataclasses.dataclass
class Timing:
    """One loader setting's alternating load/step run."""

    load_s: list[float]
    """wall seconds waiting for each batch"""
    step_s: list[float]
    """wall seconds of each step"""
    load_cpu_s: float
    """CPU seconds of the training process while waiting for batches"""
    step_cpu_s: float
    """CPU seconds of the training process in the steps"""
    worker_cpu_s: float
    """CPU seconds of the worker processes (reaped at close)"""
    decoded: int
    """batches the workers read: the ones handed out and the ones in flight at the end"""


def measure(loader: ShardLoader, step: Callable[[dict[str, Any]], None], *, repeat: int) -> Timing:
    """Batches and steps alternating, after one untimed of each; the workers are closed at the end."""
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    batches = iter(loader)
    step(next(batches))
    load_s, step_s, load_cpu, step_cpu = [], [], 0.0, 0.0
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        batch = next(batches)
        t1, c1 = time.perf_counter(), time.process_time()
        step(batch)
        t2, c2 = time.perf_counter(), time.process_time()
        load_s.append(t1 - t0)
        step_s.append(t2 - t1)
        load_cpu += c1 - c0
        step_cpu += c2 - c1
    if loader.uses_workers:
        # NOTE: the workers hold num_workers x prefetch_factor batches in flight; let them finish
        # those, so the workers' CPU is that of exactly (repeat + 1 + in flight) batches.
        time.sleep(1.0)
    loader.close()
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    decoded = repeat + 1 + (loader.cfg.num_workers * PREFETCH_FACTOR if loader.uses_workers else 0)
    return Timing(load_s, step_s, load_cpu, step_cpu, workers, decoded)


def main(argv: list[str] | None = None) -> int:
    from vdiff.training import TrainConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,demo", help=f"comma-separated, of {sorted(CONFIGS)}")
    p.add_argument("--repeat", type=int, default=12, help="timed batches/steps per round and setting")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (0 workers, N workers), order flipping")
    p.add_argument("--workers", type=int, default=2, help="data.num_workers N compared with 0")
    p.add_argument("--clips", type=int, default=32, help="clips in the shard set")
    p.add_argument("--size", default="144x256", help="clip size HxW of the curated shards")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    p.add_argument("--quick", action="store_true", help="tiny config only, 8 clips, 3 repeats, 1 round")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    names = ["tiny"] if args.quick else args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}")
    if args.workers < 1:
        p.error("--workers must be >= 1 (it is compared with 0)")
    repeat, clips, rounds = (3, 8, 1) if args.quick else (args.repeat, args.clips, args.rounds)
    height, _, width = args.size.partition("x")

    print(
        f"machine: {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {clips} clips {args.size} at 24 fps; "
        f"{rounds} rounds x {repeat} batches per setting"
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
                batch = cfg.train.batch_size
                step = train_step(cfg, cached=kind == "cached")
                runs: dict[int, list[Timing]] = {0: [], args.workers: []}
                for r in range(rounds):
                    for workers in (0, args.workers) if r % 2 == 0 else (args.workers, 0):
                        data = dataclasses.replace(cfg.data, path=str(data_path), num_workers=workers)
                        loader = EveryKindOnWorkers(data, batch_size=batch, seed=0)
                        runs[workers].append(measure(loader, step, repeat=repeat))
                for workers, timings in runs.items():
                    load = statistics.median([x for t in timings for x in t.load_s])
                    stepm = statistics.median([x for t in timings for x in t.step_s])
                    loop = statistics.median([a + b for t in timings for a, b in zip(t.load_s, t.step_s)])
                    samples = batch * repeat * len(timings)
                    load_cpu = sum(t.load_cpu_s for t in timings) / samples
                    step_cpu = sum(t.step_cpu_s for t in timings) / samples
                    decoded = batch * sum(t.decoded for t in timings)
                    worker_cpu = sum(t.worker_cpu_s for t in timings) / max(1, decoded)
                    row = (name, path.name, kind, batch, workers, load, batch / stepm, batch / loop,
                           stepm / loop, load_cpu, worker_cpu, step_cpu)  # fmt: skip
                    rows.append(row)
                    print(
                        f"{name} {kind} workers={workers}: wait {1e3 * load:.1f} ms/batch, "
                        f"step {batch / stepm:.1f} samples/s, load+step {batch / loop:.1f} samples/s",
                        flush=True,
                    )

    print()
    print(
        "| config | shards | batch | data.num_workers | wait for a batch (ms) | step alone samples/s "
        "| load + step samples/s | load + step / step alone | CPU ms/sample, training process waiting "
        "| CPU ms/sample, workers | CPU ms/sample, step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, file, kind, batch, workers, load, srate, lrate, ratio, load_cpu, worker_cpu, step_cpu in rows:
        print(
            f"| {name} ({file}) | {kind} | {batch} | {workers} | {1e3 * load:.1f} | {srate:.1f} "
            f"| {lrate:.1f} | {ratio:.2f} | {1e3 * load_cpu:.2f} | {1e3 * worker_cpu:.2f} "
            f"| {1e3 * step_cpu:.2f} |"
        )
    print("load + step / step alone = 1.00: the loader costs training no time.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
