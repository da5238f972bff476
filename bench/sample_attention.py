"""Benchmark: denoising time with a sparse attention backend against dense, same model, same run.

A toy VideoDiT trained by bench/attention_activations.py (``--preset``, cached under
runs/attention_activations/) samples from the same noise twice per repeat with an Euler
sampler: once with ``sdpa`` in every step, once under an
:class:`~vdiff.attention.policy.AttentionPolicy` (``--backend``; ``vdiff sample``'s defaults:
30 steps, the first and the last dense, from :class:`vdiff.sampling.config.SampleConfig`; the
model in tile order for the sparse backends, as ``vdiff sample`` runs it), through the same
per-step switch ``vdiff sample`` uses (:func:`vdiff.sampling.step_attention.set_step_attention`).
Reported: the median denoising wall time of each, their ratio (``x dense`` > 1: faster), and
the PSNR of the final latents against the dense run's (peak = the dense latents' max - min).

    python bench/sample_attention.py [--preset d64] [--grid 8 32 32] [--steps 30]
                                     [--dense-first 1] [--dense-last 1] [--kernel auto]
                                     [--backend sparse_sage] [--repeat 2] [--cdf 0.99]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_activations import PRESETS, context, trained_model

from vdiff.attention.policy import AttentionPolicy
from vdiff.sampling.config import SampleConfig
from vdiff.sampling.step_attention import restore_attention, set_step_attention


@torch.no_grad()
def denoise(
    model: torch.nn.Module,
    *,
    noise: torch.Tensor,
    ctx: torch.Tensor,
    steps: int,
    policy: AttentionPolicy | None,
) -> torch.Tensor:
    """Euler sampling, σ from 1 to 0 with shift 3, from ``noise`` (1, C, T, H, W); the final latents."""
    sig = torch.linspace(1.0, 0.0, steps + 1)
    sig = 3.0 * sig / (1 + 2.0 * sig)
    x = noise.clone()
    order = model.embed.token_order
    if policy is not None:
        model.set_token_order(model.config.attention.resolved_token_order(also=(policy.backend,)))
    try:
        for i in range(steps):
            if policy is not None:
                set_step_attention(model, policy, step=i, num_steps=steps)
            v = model(x, torch.tensor([float(sig[i]) * 1000]), ctx)
            x = x + float(sig[i + 1] - sig[i]) * v
    finally:
        restore_attention(model)
        model.set_token_order(order)
    return x


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of x against ref, peak = ref's range."""
    mse = float((x.double() - ref.double()).pow(2).mean())
    peak = float(ref.max() - ref.min())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="d64", choices=sorted(PRESETS))
    ap.add_argument("--grid", type=int, nargs=3, default=None, help="latent T H W (default: the preset's)")
    defaults = SampleConfig()
    ap.add_argument("--steps", type=int, default=defaults.steps, help="denoising steps (vdiff sample's)")
    ap.add_argument("--dense-first", type=int, default=defaults.attention.dense_first_steps)
    ap.add_argument("--dense-last", type=int, default=defaults.attention.dense_last_steps)
    ap.add_argument("--backend", default="sparse_sage", choices=["sage", "sparse", "sparse_sage"])
    ap.add_argument("--cdf", type=float, default=0.99, help="cdf_threshold of the sparse backends")
    ap.add_argument("--kernel", default="auto", choices=["auto", "native", "torch", "fused", "tiled"])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    p = PRESETS[args.preset]
    grid = tuple(args.grid) if args.grid else p.sample_grid
    model = trained_model(args.preset)
    opts: dict = {"kernel": args.kernel}
    if args.backend != "sage":
        opts["cdf_threshold"] = args.cdf
    policy = AttentionPolicy(
        backend=args.backend,
        options=opts,
        dense_first_steps=args.dense_first,
        dense_last_steps=args.dense_last,
    )
    noise = torch.randn(1, p.channels, *grid, generator=torch.Generator().manual_seed(0))
    ctx = context(p)
    n = math.prod(grid)
    print(
        f"# preset {args.preset}, {n} tokens, D {p.dim // p.heads}, {args.steps} steps, {policy}", flush=True
    )
    times: dict[str, list[float]] = {"dense": [], args.backend: []}
    outs: dict[str, torch.Tensor] = {}
    for r in range(args.repeat):
        for name in ("dense", args.backend) if r % 2 == 0 else (args.backend, "dense"):
            t0 = time.perf_counter()
            outs[name] = denoise(
                model, noise=noise, ctx=ctx, steps=args.steps, policy=None if name == "dense" else policy
            )
            times[name].append(time.perf_counter() - t0)
            print(f"  repeat {r}: {name} {times[name][-1]:.2f} s", flush=True)
    dense, fast = statistics.median(times["dense"]), statistics.median(times[args.backend])
    print("| tokens | backend | dense (s) | backend (s) | x dense | PSNR vs dense (dB) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {n} | {args.backend} (cdf {args.cdf}, kernel {args.kernel}) | {dense:.2f} | {fast:.2f} | "
        f"{dense / fast:.2f} | {psnr(outs[args.backend], outs['dense']):.1f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
