"""Benchmark: training throughput and memory per rank of DDP, FSDP, FSDP + Ulysses, FSDP + ring.

The peer is DDP (PyTorch's DistributedDataParallel, ``parallel.dp_replicate=N dp_shard=1``),
the usual baseline of FSDP scaling studies. Every mode trains the same VideoDiT (same seed)
on the same global batch of random latents and text embeddings, with ``vdiff.parallel``'s
``build_mesh`` + ``parallelize`` and AdamW, on N gloo processes (CPU) started with
``torch.multiprocessing`` as torchrun would (one fresh process group per mode and round, so
each mode's memory is its own). A step is what ``pipelines.train`` runs: forward, MSE loss
against the velocity target, backward, gradient clipping, ``optimizer.step()``.

Measured per mode (medians over the rounds; the modes alternate within each round):

* samples/s of the global batch over the timed steps, after ``--warmup`` untimed steps;
* training state per rank: bytes of this rank's parameters, gradients and AdamW moments,
  counted from the local tensors (FSDP's are shards of DTensors): exact, not sampled;
* peak RSS per rank: the process's high-water mark (VmHWM) above its RSS when the worker
  started (VmRSS), i.e. what building, sharding and training the model added, activations,
  communication buffers and allocator slack included;
* the loss of the last step, which must match DDP's (the modes train the same steps).

    python bench/parallel_train.py [--quick] [--rounds N] [--steps N] [--warmup N]
                                   [--latent TxHxW] [--batch N] [--threads N]
                                   [--device cuda] [--dtype bfloat16] [--json PATH]

``--device cuda`` runs the 2 ranks on 2 GPUs (NCCL, one GPU a rank; it needs 2): ``--dtype``
(default there: bfloat16) is FSDP2's ``param_dtype`` for the FSDP modes and the autocast dtype
of DDP (which keeps fp32 parameters), SDPA is pinned to its flash backend (``bench/devices.py``),
steps are timed between synchronised barriers, and the memory column is the peak CUDA memory
allocated per rank (``torch.cuda.max_memory_allocated``) instead of the RSS. FSDP2 on one GPU is
measured by ``bench/train_step.py --variants fsdp``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.devices import DTYPES, add_device_args, autocast, machine_line, resolve, sdpa_peer  # noqa: E402
from vdiff.diffusion import add_noise, sigma_to_timestep, velocity_target  # noqa: E402
from vdiff.models import ModelConfig, build_model  # noqa: E402
from vdiff.optim import OptimConfig, build_optimizer  # noqa: E402
from vdiff.parallel import ParallelConfig, build_mesh  # noqa: E402
from vdiff.parallel.distributed import full_value  # noqa: E402
from vdiff.parallel.parallelize import parallelize, unwrap  # noqa: E402

MODES: dict[str, dict[str, int]] = {
    "DDP": {"dp_replicate": 2, "dp_shard": 1},
    "FSDP": {"dp_shard": 2},
    "FSDP + Ulysses": {"ulysses": 2},
    "FSDP + ring": {"ring": 2},
}
"""parallel.* degrees of each mode on 2 ranks (sequence-parallel ranks are FSDP-sharded too)"""

MODEL = dict(
    in_channels=16, out_channels=16, num_heads=4, head_dim=64, ffn_dim=1024, num_layers=4, text_dim=384
)
"""dim 256, 4 layers (about 5 M parameters); the default latents (16, 4, 16, 16) give 256 tokens"""
TEXT = (16, 384)
QUICK_MODEL = dict(
    in_channels=4, out_channels=4, num_heads=2, head_dim=16, ffn_dim=64, num_layers=2, text_dim=32
)
QUICK_LATENT, QUICK_TEXT = (4, 2, 8, 8), (8, 32)


def global_batch(step: int, *, size: int, latent: tuple[int, ...], text: tuple[int, int]) -> dict:
    """The same global batch on every rank: latents, noise, σ and text of ``size`` samples."""
    g = torch.Generator().manual_seed(1000 + step)
    return {
        "x0": torch.randn(size, *latent, generator=g),
        "noise": torch.randn(size, *latent, generator=g),
        "sigma": torch.rand(size, generator=g),
        "context": torch.randn(size, *text, generator=g),
    }


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of this rank's parameters, gradients and optimizer state (local shards of DTensors)."""

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if isinstance(t, DTensor) else t

    params = list(model.parameters())
    out = {
        "params": sum(local(p).numel() * local(p).element_size() for p in params),
        "grads": sum(
            local(p.grad).numel() * local(p.grad).element_size() for p in params if p.grad is not None
        ),
        "optimizer": 0,
    }
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.numel() > 1:
                out["optimizer"] += local(v).numel() * local(v).element_size()
    return out


def rss_kib(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_mode(rank: int, world: int, port: int, job: dict[str, Any], out: str) -> None:
    """One worker: join the group, train ``warmup + steps`` steps of one mode, write its figures."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ.update(WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(job["threads"])
    # NOTE: FSDP2 warns that the wrapped embedding MLPs return views; no in-place op follows them.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
    start_rss = rss_kib("VmRSS")
    cuda = job["device"] == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dtype = DTYPES[job["dtype"]]
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    try:
        ddp = job["degrees"].get("dp_shard") == 1
        low = dtype == torch.bfloat16 and not ddp  # NOTE: FSDP2 mixed precision; DDP autocasts instead
        pcfg = ParallelConfig(param_dtype="bfloat16" if low else "float32", **job["degrees"])
        mesh = build_mesh(pcfg, device_type=device.type)
        local = mesh.dims.local_batch_size(job["batch"])
        torch.manual_seed(0)
        model = build_model(ModelConfig(**job["model"])).to(device).train()
        with torch.no_grad():
            # NOTE: Wan's zero output projection would make every mode's first loss the same
            # (the model outputs 0); random weights make the loss check mean something.
            torch.nn.init.normal_(model.unembed.proj.weight, std=0.02)
        model = parallelize(model, mesh, pcfg)
        cast = autocast(device, dtype) if ddp else autocast(device, torch.float32)
        optimizer = build_optimizer(unwrap(model), OptimConfig(lr=1e-4, weight_decay=0.0))
        lo = mesh.dp_rank * local
        losses, times = [], []
        for step in range(job["warmup"] + job["steps"]):
            b = global_batch(step, size=job["batch"], latent=tuple(job["latent"]), text=tuple(job["text"]))
            x0, noise = b["x0"][lo : lo + local], b["noise"][lo : lo + local]
            sigma, context = b["sigma"][lo : lo + local], b["context"][lo : lo + local]
            x0, noise, sigma, context = (t.to(device) for t in (x0, noise, sigma, context))
            if cuda:
                torch.cuda.synchronize(device)
            dist.barrier()
            t0 = time.perf_counter()
            with cast, sdpa_peer(device, dtype):
                pred = model(add_noise(x0, noise, sigma), sigma_to_timestep(sigma), context)
            loss = F.mse_loss(pred.float(), velocity_target(x0, noise))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            full_value(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
            optimizer.step()
            if cuda:
                torch.cuda.synchronize(device)
            dist.barrier()
            times.append(time.perf_counter() - t0)
            loss_sum = loss.detach().clone()
            dist.all_reduce(loss_sum)  # NOTE: SUM over all ranks; sequence-parallel peers hold copies
            losses.append(loss_sum.item() / world)
        timed = sum(times[job["warmup"] :])
        result = {
            "rank": rank,
            "samples_per_s": job["batch"] * job["steps"] / timed,
            "state": state_bytes(unwrap(model), optimizer),
            "peak_rss_mib": (
                torch.cuda.max_memory_allocated(device) / 2**20
                if cuda
                else (rss_kib("VmHWM") - start_rss) / 1024
            ),
            "last_loss": losses[-1],
            "mode": mesh.dims.data_parallel,
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(job: dict[str, Any], *, world: int) -> list[dict[str, Any]]:
    """Run one mode on ``world`` fresh processes; the per-rank result dicts."""
    with tempfile.TemporaryDirectory(prefix="bench_parallel_") as out:
        # NOTE: fork reuses this process's imports (as the distributed tests do): a mode starts in ~1 s.
        # CUDA cannot be used in a forked child once the parent has initialised it: spawn there.
        method = "spawn" if job["device"] == "cuda" else "fork"
        mp.start_processes(run_mode, args=(world, free_port(), job, out), nprocs=world, start_method=method)
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every mode once, in turn")
    p.add_argument("--steps", type=int, default=6, help="timed steps per mode and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps per mode and round")
    p.add_argument("--batch", type=int, default=4, help="global batch (divisible by 2)")
    p.add_argument("--latent", default="4x16x16", help="latent TxHxW (16 channels, patch 1x2x2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (2 ranks on 2 cores: 1)")
    p.add_argument("--quick", action="store_true", help="a tiny model, 1 round of 2 steps (a smoke run)")
    p.add_argument("--json", help="also write the table's rows as JSON here")
    add_device_args(p)
    args = p.parse_args(argv)
    device, dtype = resolve(args, p)
    world = 2
    if device.type == "cuda" and torch.cuda.device_count() < world:
        p.error(f"--device cuda needs {world} GPUs (one a rank), torch sees {torch.cuda.device_count()}")
    job = {
        "model": QUICK_MODEL if args.quick else MODEL,
        "latent": QUICK_LATENT if args.quick else (16, *(int(v) for v in args.latent.split("x"))),
        "text": QUICK_TEXT if args.quick else TEXT,
        "batch": args.batch,
        "warmup": 1 if args.quick else args.warmup,
        "steps": 2 if args.quick else args.steps,
        "threads": args.threads,
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
    }
    rounds = 1 if args.quick else args.rounds
    params = build_model(ModelConfig(**job["model"]), device="meta").num_params()
    t, h, w = job["latent"][1:]
    backend = (
        "NCCL ranks (one GPU each)" if device.type == "cuda" else f"gloo ranks x {args.threads} thread(s)"
    )
    print(
        f"{machine_line(device, dtype)}; {len(os.sched_getaffinity(0))} cores, {world} {backend}; "
        f"model {params / 1e6:.2f} M params, {t * (h // 2) * (w // 2)} tokens per sample, global batch "
        f"{args.batch}; {job['warmup']} warm-up + {job['steps']} timed steps, {rounds} round(s)"
    )
    results: dict[str, list[list[dict[str, Any]]]] = {m: [] for m in MODES}
    for r in range(rounds):
        order = list(MODES) if r % 2 == 0 else list(MODES)[::-1]
        for mode in order:
            ranks = launch({**job, "degrees": MODES[mode]}, world=world)
            results[mode].append(ranks)
            print(f"round {r} {mode}: {ranks[0]['samples_per_s']:.2f} samples/s", flush=True)

    def med(mode: str, key: str) -> float:
        return statistics.median(max(rank[key] for rank in ranks) for ranks in results[mode])

    base_rate, base_rss = med("DDP", "samples_per_s"), med("DDP", "peak_rss_mib")
    base_state = sum(results["DDP"][0][0]["state"].values())
    base_loss = results["DDP"][0][0]["last_loss"]
    print()
    memory = "peak CUDA allocated" if device.type == "cuda" else "peak RSS"
    print(
        "| mode | samples/s | ratio vs DDP | params+grads+AdamW per rank (MiB) | ratio vs DDP "
        f"| {memory} per rank (MiB) | ratio vs DDP | last loss − DDP's |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for mode in MODES:
        rate, rss = med(mode, "samples_per_s"), med(mode, "peak_rss_mib")
        state = max(sum(rank["state"].values()) for rank in results[mode][0])
        dloss = results[mode][0][0]["last_loss"] - base_loss
        rows.append(
            {"mode": mode, "samples_per_s": rate, "ratio": rate / base_rate, "state_mib": state / 2**20,
             "peak_mib": rss, "peak_kind": memory, "last_loss_minus_ddp": dloss}
        )  # fmt: skip
        print(
            f"| {mode} | {rate:.2f} | {rate / base_rate:.2f} | {state / 2**20:.1f} "
            f"| {state / base_state:.2f} | {rss:.0f} | {rss / base_rss:.2f} | {dloss:+.1e} |"
        )
    print(
        "samples/s: global batch over the timed steps (median of rounds); memory: the larger of the 2 "
        "ranks. Activation checkpointing, torch.compile and FSDP2 on one GPU: bench/train_step.py --variants."
    )
    if args.json:
        meta = {"machine": machine_line(device, dtype), "world": world, "job": job, "rounds": rounds}
        Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
