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

Sizes (``--sizes``; ``wan-block`` is not in the default run, about a minute per step pair):

* ``small``: the demo model's width (dim 128, 4 layers), a (4, 16, 16) latent grid: 256 tokens.
* ``medium``: dim 384, 2 layers, a 17-frame 240x416 video's latents (5, 30, 52): 1950 tokens.
* ``wan-block``: Wan2.1-1.3B's block (dim 1536, 12 heads, ffn 8960, text 4096 x 512 tokens),
  2 layers, 1950 tokens.

``--profile`` prints torch.profiler's top operators of one step of each model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vdiff.models import VideoDiT, build_model
from vdiff.models.wan import config_from_diffusers, diffusers_to_vdiff_key


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


SIZES = {
    "small": Size(
        heads=4, head_dim=32, ffn_dim=512, layers=4, text_dim=384, text_len=16, latent=(4, 16, 16), batch=2
    ),
    "medium": Size(
        heads=6, head_dim=64, ffn_dim=1536, layers=2, text_dim=512, text_len=64, latent=(5, 30, 52), batch=1
    ),
    "wan-block": Size(
        heads=12,
        head_dim=128,
        ffn_dim=8960,
        layers=2,
        text_dim=4096,
        text_len=512,
        latent=(5, 30, 52),
        batch=1,
    ),
}
QUICK = Size(heads=2, head_dim=16, ffn_dim=64, layers=2, text_dim=32, text_len=8, latent=(2, 8, 8), batch=2)


def build_pair(size: Size, *, seed: int = 0) -> tuple[nn.Module, VideoDiT]:
    """A random diffusers WanTransformer3DModel and its conversion to vdiff (same weights)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    wan = WanTransformer3DModel(**size.wan_config())
    vdiff = build_model(config_from_diffusers(dict(wan.config)), init=False)
    vdiff.load_state_dict({diffusers_to_vdiff_key(k): v for k, v in wan.state_dict().items()}, strict=True)
    return wan.train(), vdiff.train()


def make_inputs(size: Size, *, seed: int = 1) -> dict[str, torch.Tensor]:
    """Latents (B, 16, T, H, W), timesteps (B,), text embeddings (B, L, text_dim), a target like x."""
    g = torch.Generator().manual_seed(seed)
    shape = (size.batch, 16, *size.latent)
    return {
        "x": torch.randn(shape, generator=g),
        "t": torch.rand(size.batch, generator=g) * 1000,
        "context": torch.randn(size.batch, size.text_len, size.text_dim, generator=g),
        "target": torch.randn(shape, generator=g),
    }


def step_fn(model: nn.Module, inputs: dict[str, torch.Tensor], *, diffusers: bool) -> Callable[[], None]:
    """One training step's model work: forward, MSE loss, backward, zero_grad."""
    x, t, c, target = inputs["x"], inputs["t"], inputs["context"], inputs["target"]

    def step() -> None:
        out = model(x, t, c, return_dict=False)[0] if diffusers else model(x, t, c)
        torch.nn.functional.mse_loss(out, target).backward()
        model.zero_grad(set_to_none=True)

    return step


def check_agree(wan: nn.Module, vdiff: VideoDiT, inputs: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(max |output difference|, max gradient difference relative to the largest gradient)."""
    x, t, c, target = inputs["x"], inputs["t"], inputs["context"], inputs["target"]
    ref = wan(x, t, c, return_dict=False)[0]
    out = vdiff(x, t, c)
    torch.nn.functional.mse_loss(ref, target).backward()
    torch.nn.functional.mse_loss(out, target).backward()
    ours = dict(vdiff.named_parameters())
    grad_diff = grad_max = 0.0
    for name, p in wan.named_parameters():
        mine = ours[diffusers_to_vdiff_key(name)].grad
        grad_diff = max(grad_diff, (mine - p.grad).abs().max().item())
        grad_max = max(grad_max, p.grad.abs().max().item())
    wan.zero_grad(set_to_none=True)
    vdiff.zero_grad(set_to_none=True)
    return (out - ref).abs().max().item(), grad_diff / max(grad_max, 1e-30)


def time_once(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def alternate(
    fns: dict[str, Callable[[], None]], *, repeat: int, warmup: int
) -> dict[str, list[tuple[float, float]]]:
    """Time each function ``repeat`` times, alternating ABBA, after ``warmup`` untimed calls each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for r in range(repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(time_once(fns[name]))
    return times


def profile_table(fn: Callable[[], None], *, rows: int = 15) -> str:
    """torch.profiler's operators of one call of ``fn``, by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="small,medium", help=f"comma-separated, of {sorted(SIZES)}")
    p.add_argument("--repeat", type=int, default=9, help="timed steps of each model; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each model first")
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables of one step each")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    p.add_argument("--quick", action="store_true", help="a tiny config, 3 repeats (a smoke run)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    unknown = [s for s in args.sizes.split(",") if s not in SIZES]
    if unknown and not args.quick:
        p.error(f"unknown sizes {unknown}; choose from {sorted(SIZES)}")
    sizes = {"quick": QUICK} if args.quick else {s: SIZES[s] for s in args.sizes.split(",")}
    repeat = 3 if args.quick else args.repeat

    print(
        f"machine: {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, fp32 CPU; median of {repeat} alternating steps"
    )
    rows = []
    for name, size in sizes.items():
        wan, vdiff = build_pair(size)
        inputs = make_inputs(size)
        out_diff, grad_rel = check_agree(wan, vdiff, inputs)
        if out_diff > 1e-4 or grad_rel > 1e-4:
            print(f"{name}: vdiff and diffusers disagree (output {out_diff:.2e}, grads {grad_rel:.2e})")
            return 1
        fns = {
            "vdiff": step_fn(vdiff, inputs, diffusers=False),
            "diffusers": step_fn(wan, inputs, diffusers=True),
        }
        times = alternate(fns, repeat=repeat, warmup=args.warmup)
        wall = {n: statistics.median(w for w, _ in ts) for n, ts in times.items()}
        cpu = {n: statistics.median(c for _, c in ts) for n, ts in times.items()}
        params = sum(q.numel() for q in vdiff.parameters()) / 1e6
        rows.append((name, size, params, out_diff, grad_rel, wall, cpu))
        print(
            f"{name}: vdiff {wall['vdiff'] * 1e3:.0f} ms, diffusers {wall['diffusers'] * 1e3:.0f} ms, "
            f"ratio {wall['vdiff'] / wall['diffusers']:.3f} (all wall: vdiff "
            + " ".join(f"{w * 1e3:.0f}" for w, _ in times["vdiff"])
            + "; diffusers "
            + " ".join(f"{w * 1e3:.0f}" for w, _ in times["diffusers"])
            + ")",
            flush=True,
        )
        if args.profile:
            for label, fn in fns.items():
                print(f"--- {name}, {label}: one step, by self CPU time\n{profile_table(fn)}")

    print()
    print(
        "| size | params | tokens x batch | max abs out diff | max grad diff (rel) "
        "| vdiff ms | diffusers ms | ratio (wall) | ratio (CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, size, params, out_diff, grad_rel, wall, cpu in rows:
        print(
            f"| {name} | {params:.2f} M | {size.tokens} x {size.batch} | {out_diff:.1e} | {grad_rel:.1e} "
            f"| {wall['vdiff'] * 1e3:.0f} | {wall['diffusers'] * 1e3:.0f} "
            f"| {wall['vdiff'] / wall['diffusers']:.3f} | {cpu['vdiff'] / cpu['diffusers']:.3f} |"
        )
    print(
        "ratio = vdiff / diffusers (median step time; < 1 means vdiff is faster). "
        "GPU step time and MFU: not measured (no GPU on this machine)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
