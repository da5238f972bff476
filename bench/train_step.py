"""Benchmark: forward + backward of vdiff's VideoDiT against diffusers' WanTransformer3DModel.

The peer is the implementation Wan2.1 checkpoints are published for. Both models compute the
same function: the diffusers model is built from a small random config (PyTorch's default
init), and vdiff's model is made from it with the conversion vdiff uses for real checkpoints
(``config_from_diffusers`` + ``diffusers_to_vdiff_key``); the script checks that outputs and
gradients agree before it times anything. One step is forward, an MSE loss against a fixed
target, backward and ``zero_grad`` (no optimizer: the optimizer is the same code for both).
The two models alternate within each repeat (ABBA order, so neither always runs first); the
ratio printed is vdiff's median over diffusers' (< 1 means vdiff is faster; goal <= 1).

    python bench/train_step.py [--quick] [--sizes small,medium] [--repeat N] [--profile]
                               [--device cuda] [--dtype bfloat16] [--variants eager,ac,compile,fsdp]

Sizes (``--sizes``; ``wan-block`` is not in the default run, about a minute per step pair):

* ``small``: the demo model's width (dim 128, 4 layers), a (4, 16, 16) latent grid: 256 tokens.
* ``medium``: dim 384, 2 layers, a 17-frame 240x416 video's latents (5, 30, 52): 1950 tokens.
* ``wan-block``: Wan2.1-1.3B's block (dim 1536, 12 heads, ffn 8960, text 4096 x 512 tokens),
  2 layers, 1950 tokens.

* ``wan2.1-1.3b``: the whole Wan2.1-1.3B (30 layers), a 17-frame 480x832 video's latents
  (5, 60, 104): 7800 tokens, batch 1. For a GPU (``--device cuda``); about 5 GB of fp32 weights a model.

``--device cuda`` runs on the GPU; ``--dtype`` (default there: bfloat16) is the autocast dtype of
the forward (fp32 weights, as ``vdiff train`` with ``train.bf16=true``), and SDPA is pinned to its
flash backend for both models (``bench/devices.py``). Times are CUDA events, the agreement check
runs in fp32 first (TF32 off). Each row also gives the step's memory (peak minus what was
resident before the step: CUDA max allocated, or peak RSS on CPU), the model FLOP/s
(``vdiff.models.flops.train_flops``) and MFU when the device's dense bf16 peak is known
(``vdiff.models.flops.PEAK_BF16_TFLOPS`` by GPU name, or ``$VDIFF_PEAK_TFLOPS``).

``--variants eager,ac,compile,fsdp`` also times vdiff alone as ``vdiff train`` can run it, one
variant after the other, each on a fresh copy of the same weights: ``eager`` (autocast, the
peer of the others), ``ac`` (activation checkpointing of every block, ``parallel.activation_checkpoint
=full``), ``compile`` (``torch.compile`` of each block), ``ac+compile``, and ``fsdp`` (FSDP2 on a
1-rank process group, ``param_dtype`` = ``--dtype`` as mixed precision, no autocast).
``--no-diffusers`` skips the comparison with diffusers (the variants only).

``--profile`` prints torch.profiler's top operators of one step of each model; ``--json PATH``
also writes every row as JSON (``bench/gpu_all.sh`` collects it).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import sys
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.devices import (  # noqa: E402
    add_device_args,
    autocast,
    device_name,
    machine_line,
    peak_memory_mib,
    reset_peak,
    resolve,
    sdpa_peer,
    sync,
    time_call,
)
from vdiff.models import VideoDiT, build_model  # noqa: E402
from vdiff.models.flops import peak_flops, train_flops  # noqa: E402
from vdiff.models.wan import config_from_diffusers, diffusers_to_vdiff_key  # noqa: E402


@dataclass(frozen=True)
class Size:
    """A diffusers WanTransformer3DModel config and the inputs of one step."""

    heads: int
    head_dim: int
    ffn_dim: int
    layers: int
    text_dim: int
    text_len: int
    latent: tuple[int, int, int]
    """(T, H, W) of the 16-channel latents; patch (1, 2, 2)"""
    batch: int

    def wan_config(self) -> dict:
        return dict(
            patch_size=(1, 2, 2),
            num_attention_heads=self.heads,
            attention_head_dim=self.head_dim,
            in_channels=16,
            out_channels=16,
            text_dim=self.text_dim,
            freq_dim=256,
            ffn_dim=self.ffn_dim,
            num_layers=self.layers,
            cross_attn_norm=True,
            rope_max_seq_len=1024,
        )

    @property
    def tokens(self) -> int:
        t, h, w = self.latent
        return t * (h // 2) * (w // 2)


WAN_BLOCK = dict(heads=12, head_dim=128, ffn_dim=8960, text_dim=4096, text_len=512)
SIZES = {
    "small": Size(
        heads=4, head_dim=32, ffn_dim=512, layers=4, text_dim=384, text_len=16, latent=(4, 16, 16), batch=2
    ),
    "medium": Size(
        heads=6, head_dim=64, ffn_dim=1536, layers=2, text_dim=512, text_len=64, latent=(5, 30, 52), batch=1
    ),
    "wan-block": Size(**WAN_BLOCK, layers=2, latent=(5, 30, 52), batch=1),
    "wan2.1-1.3b": Size(**WAN_BLOCK, layers=30, latent=(5, 60, 104), batch=1),
}
QUICK = Size(heads=2, head_dim=16, ffn_dim=64, layers=2, text_dim=32, text_len=8, latent=(2, 8, 8), batch=2)
VARIANTS = ("eager", "ac", "compile", "ac+compile", "fsdp")


def build_pair(size: Size, *, seed: int = 0) -> tuple[nn.Module, VideoDiT]:
    """A random diffusers WanTransformer3DModel and its conversion to vdiff (same weights)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    wan = WanTransformer3DModel(**size.wan_config())
    vdiff = build_model(config_from_diffusers(dict(wan.config)), init=False)
    vdiff.load_state_dict({diffusers_to_vdiff_key(k): v for k, v in wan.state_dict().items()}, strict=True)
    return wan.train(), vdiff.train()


def make_inputs(size: Size, *, device: torch.device, seed: int = 1) -> dict[str, torch.Tensor]:
    """Latents (B, 16, T, H, W), timesteps (B,), text embeddings (B, L, text_dim), a target like x."""
    g = torch.Generator().manual_seed(seed)
    shape = (size.batch, 16, *size.latent)
    inputs = {
        "x": torch.randn(shape, generator=g),
        "t": torch.rand(size.batch, generator=g) * 1000,
        "context": torch.randn(size.batch, size.text_len, size.text_dim, generator=g),
        "target": torch.randn(shape, generator=g),
    }
    return {k: v.to(device) for k, v in inputs.items()}


def step_fn(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    *,
    diffusers: bool,
    cast: Callable[[], AbstractContextManager] = nullcontext,
) -> Callable[[], None]:
    """One training step's model work: forward (under ``cast()``), MSE loss, backward, zero_grad."""
    x, t, c, target = inputs["x"], inputs["t"], inputs["context"], inputs["target"]

    def step() -> None:
        with cast():
            out = model(x, t, c, return_dict=False)[0] if diffusers else model(x, t, c)
        torch.nn.functional.mse_loss(out.float(), target).backward()
        model.zero_grad(set_to_none=True)

    return step


def check_agree(wan: nn.Module, vdiff: VideoDiT, inputs: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(max |output difference|, max gradient difference relative to the largest gradient), fp32."""
    x, t, c, target = inputs["x"], inputs["t"], inputs["context"], inputs["target"]
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # NOTE: else CUDA's patch Conv3d rounds to TF32
    try:
        ref = wan(x, t, c, return_dict=False)[0]
        out = vdiff(x, t, c)
        torch.nn.functional.mse_loss(ref, target).backward()
        torch.nn.functional.mse_loss(out, target).backward()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    ours = dict(vdiff.named_parameters())
    grad_diff = grad_max = 0.0
    for name, p in wan.named_parameters():
        mine = ours[diffusers_to_vdiff_key(name)].grad
        grad_diff = max(grad_diff, (mine - p.grad).abs().max().item())
        grad_max = max(grad_max, p.grad.abs().max().item())
    wan.zero_grad(set_to_none=True)
    vdiff.zero_grad(set_to_none=True)
    return (out - ref).abs().max().item(), grad_diff / max(grad_max, 1e-30)


@dataclass
class Timing:
    """Wall and CPU seconds of each timed step, and the step's memory above what was resident."""

    wall: list[float]
    cpu: list[float]
    step_mib: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.wall)


def step_memory(fn: Callable[[], None], device: torch.device) -> float:
    """MiB one call of ``fn`` adds at its peak over what was resident before it."""
    sync(device)
    resident = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
    reset_peak(device)
    if resident is None:
        resident = peak_memory_mib(device)  # NOTE: right after the reset, VmHWM is the current RSS
    fn()
    return peak_memory_mib(device) - resident


def alternate(
    fns: dict[str, Callable[[], None]], *, repeat: int, warmup: int, device: torch.device
) -> dict[str, Timing]:
    """Time each function ``repeat`` times, alternating ABBA, after ``warmup`` untimed calls each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times = {n: Timing([], [], step_memory(fns[n], device)) for n in names}
    for r in range(repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu, _ = time_call(fns[name], device)
            times[name].wall.append(wall)
            times[name].cpu.append(cpu)
    return times


def profile_table(fn: Callable[[], None], *, device: torch.device, rows: int = 15) -> str:
    """torch.profiler's operators of one call of ``fn``, by self time on the device."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def single_rank_group(device: torch.device) -> None:
    """A 1-rank process group (nccl on CUDA, gloo on CPU) for FSDP2 on one device, if none exists."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device.type == "cuda":  # NOTE: init_process_group wants a device with an index
        cuda = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=cuda)
    else:
        dist.init_process_group("gloo", rank=0, world_size=1)


def variant_model(base: VideoDiT, variant: str, *, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A copy of ``base`` on ``device`` prepared as ``vdiff train`` would for ``variant``."""
    from torch.distributed.device_mesh import init_device_mesh

    from vdiff.parallel import ParallelConfig
    from vdiff.parallel.mesh import ParallelDims, ParallelMesh
    from vdiff.parallel.parallelize import apply_activation_checkpointing, apply_compile, apply_fsdp

    model = copy.deepcopy(base).to(device).train()
    # NOTE: FSDP2 warns that the wrapped embedding MLPs return views; no in-place op follows them.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
    if variant in ("ac", "ac+compile"):
        apply_activation_checkpointing(model, ParallelConfig(activation_checkpoint="full"))
    if variant in ("compile", "ac+compile"):
        apply_compile(model)
    if variant == "fsdp":
        single_rank_group(device)
        pcfg = ParallelConfig(param_dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
        # NOTE: build_mesh gives one process no data-parallel mesh (nothing to shard over); FSDP2
        # on a 1-rank mesh still runs its all-gathers, casts and reduce-scatters, as on many GPUs.
        dims = ParallelDims.from_config(pcfg, 1)
        mesh = ParallelMesh(
            dims=dims,
            device_type=device.type,
            meshes={"data_parallel": init_device_mesh(device.type, (1,), mesh_dim_names=("dp_shard_sp",))},
        )
        apply_fsdp(model, mesh, pcfg)
    return model


def row_figures(size: Size, cfg: Any, timing: Timing, peak: float | None) -> dict[str, Any]:
    """Median ms, all ms, CPU ms, step memory, model TFLOP/s and MFU (None: peak unknown) of a row."""
    flops = size.batch * train_flops(cfg, tokens=size.tokens, text_len=size.text_len)
    per_s = flops / timing.median
    return {
        "ms": timing.median * 1e3,
        "cpu_ms": statistics.median(timing.cpu) * 1e3,
        "all_ms": [round(w * 1e3, 2) for w in timing.wall],
        "step_mib": round(timing.step_mib, 1),
        "tflops": per_s / 1e12,
        "mfu": per_s / peak if peak else None,
    }


def fmt_mfu(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="small,medium", help=f"comma-separated, of {sorted(SIZES)}")
    p.add_argument("--repeat", type=int, default=9, help="timed steps of each model; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each model first")
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables of one step each")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    p.add_argument("--quick", action="store_true", help="a tiny config, 3 repeats (a smoke run)")
    p.add_argument("--variants", default="", help=f"comma-separated vdiff-only variants, of {list(VARIANTS)}")
    p.add_argument("--no-diffusers", action="store_true", help="skip the comparison with diffusers")
    p.add_argument("--json", help="also write the rows as JSON here")
    add_device_args(p)
    args = p.parse_args(argv)
    device, dtype = resolve(args, p)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    unknown = [s for s in args.sizes.split(",") if s not in SIZES]
    if unknown and not args.quick:
        p.error(f"unknown sizes {unknown}; choose from {sorted(SIZES)}")
    variants = [v for v in args.variants.split(",") if v]
    if bad := [v for v in variants if v not in VARIANTS]:
        p.error(f"--variants: unknown {bad}; choose from {list(VARIANTS)}")
    sizes = {"quick": QUICK} if args.quick else {s: SIZES[s] for s in args.sizes.split(",")}
    repeat = 3 if args.quick else args.repeat
    peak = peak_flops(device_name(device))
    cast = lambda: autocast(device, dtype)
    tol = 1e-4 if device.type == "cpu" else 2e-3  # NOTE: CUDA kernels reduce in other orders

    print(f"{machine_line(device, dtype)}; median of {repeat} steps; MFU peak: "
          + (f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown (set VDIFF_PEAK_TFLOPS)"))  # fmt: skip
    rows: list[dict[str, Any]] = []
    for name, size in sizes.items():
        wan, vdiff = build_pair(size)
        inputs = make_inputs(size, device=device)
        info = {"size": name, "tokens": size.tokens, "batch": size.batch, "layers": size.layers}
        info["params_m"] = round(sum(q.numel() for q in vdiff.parameters()) / 1e6, 2)
        if not args.no_diffusers:
            wan, vdiff = wan.to(device), vdiff.to(device)
            out_diff, grad_rel = check_agree(wan, vdiff, inputs)
            if out_diff > tol or grad_rel > tol:
                print(f"{name}: vdiff and diffusers disagree (output {out_diff:.2e}, grads {grad_rel:.2e})")
                return 1
            fns = {
                "vdiff": step_fn(vdiff, inputs, diffusers=False, cast=cast),
                "diffusers": step_fn(wan, inputs, diffusers=True, cast=cast),
            }
            with sdpa_peer(device, dtype):
                times = alternate(fns, repeat=repeat, warmup=args.warmup, device=device)
                if args.profile:
                    for label, fn in fns.items():
                        print(f"--- {name}, {label}: one step\n{profile_table(fn, device=device)}")
            base = times["diffusers"].median
            for label in fns:
                figs = row_figures(size, vdiff.config, times[label], peak)
                rows.append({**info, "model": label, "variant": "eager", **figs,
                             "ratio": times[label].median / base, "peer": "diffusers",
                             "max_out_diff": out_diff, "max_grad_diff_rel": grad_rel})  # fmt: skip
            print(f"{name}: vdiff {times['vdiff'].median * 1e3:.1f} ms, diffusers {base * 1e3:.1f} ms, "
                  f"ratio {times['vdiff'].median / base:.3f}; max |out diff| {out_diff:.1e}, "
                  f"max grad diff (rel) {grad_rel:.1e}", flush=True)  # fmt: skip
        wan = wan.cpu()
        del wan
        base_ms = None
        for variant in variants:
            model = variant_model(vdiff.cpu(), variant, device=device, dtype=dtype)
            fn = step_fn(model, inputs, diffusers=False, cast=nullcontext if variant == "fsdp" else cast)
            with sdpa_peer(device, dtype):
                timing = alternate({variant: fn}, repeat=repeat, warmup=args.warmup, device=device)[variant]
            base_ms = base_ms or timing.median
            figs = row_figures(size, vdiff.config, timing, peak)
            rows.append({**info, "model": "vdiff", "variant": variant, **figs,
                         "ratio": timing.median / base_ms, "peer": variants[0]})  # fmt: skip
            print(f"{name} {variant}: {figs['ms']:.1f} ms, {figs['step_mib']:.0f} MiB, "
                  f"{figs['tflops']:.2f} TFLOP/s, MFU {fmt_mfu(figs['mfu'])}", flush=True)  # fmt: skip
            del model, fn
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print()
    print("| size | params | tokens x batch | model | variant | ms | step MiB | TFLOP/s | MFU | ratio | vs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['params_m']:.2f} M | {r['tokens']} x {r['batch']} | {r['model']} "
            f"| {r['variant']} | {r['ms']:.1f} | {r['step_mib']:.0f} | {r['tflops']:.3f} "
            f"| {fmt_mfu(r['mfu'])} | {r['ratio']:.3f} | {r['peer']} |"
        )
    print(
        "ratio = median step time over the peer's (< 1: faster). step MiB: peak memory of one step "
        "above what was resident before it. TFLOP/s: vdiff.models.flops.train_flops over the median "
        "time (dense attention, no recomputation); MFU: that over the device's dense bf16 peak."
    )
    if "fsdp" in variants:
        import torch.distributed as dist

        dist.destroy_process_group()
    if args.json:
        meta = {"machine": machine_line(device, dtype), "repeat": repeat, "peak_flops": peak}
        meta["sizes"] = {n: asdict(s) for n, s in sizes.items()}
        Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
