"""Benchmark: vdiff's sampling against diffusers' ``WanPipeline`` on the same tiny random Wan2.1
weights, then vdiff's TeaCache-style step caching and sparse attention against its dense run.

One random diffusers-format Wan2.1 folder is written once (transformer, VAE, UMT5 text encoder,
tokenizer; ``tests/pipelines/test_sample_wan.py:write_tiny_wan``). Both pipelines load it; they
get the same prompt embeddings (encoded once by vdiff's text encoder, and checked against
``WanPipeline.encode_prompt``), the same initial noise, steps, size, guidance and scheduler.

1. vdiff vs diffusers: the two alternate ``--repeat`` times (the order flips every repeat), on
   the denoising loop alone and end to end (+ VAE decode); the ratios printed are vdiff's
   median wall and CPU time over diffusers' (< 1: vdiff is faster) and the median of the
   paired per-repeat wall ratios, with the max abs difference of the final latents and of the
   decoded videos.
2. vdiff dense vs ``cache.enabled=true`` (TeaCache-style, each of ``--cache-thresholds``) vs
   ``attention.backend=sparse_sage`` with the dense-first/last-steps policy (AttentionPolicy
   defaults: 2 dense first steps, 1 dense last): they alternate the same way, on the denoising
   loop alone (latents); the speedup is dense's median (wall, CPU) over the variant's; the error is the
   decoded video's difference from the dense one (max and mean abs, PSNR in [-1, 1]), and
   ``eval.evaluate``'s weight-free dimensions score every variant's videos (one per repeat:
   prompt and seed change each repeat).

    python bench/sample.py [--repeat N] [--steps N] [--frames N] [--height N] [--width N]
                           [--device cuda] [--dtype bfloat16] [--no-diffusers] [--no-eval] [--json PATH]

``--device cuda`` runs both pipelines on the GPU with the transformers in ``--dtype`` (default
there: bfloat16; the VAE and text encoder stay float32), SDPA's flash backend put first
(``bench/devices.py``; the float32 VAE falls back; the sparse backends take their Triton
kernels), CUDA-event timers, and each variant's peak memory (``torch.cuda.max_memory_allocated``;
on CPU the peak RSS) next to its time. ``--frames 81 --height 480 --width 832`` gives 21x60x104
latents: 32760 tokens, the size of a Wan2.1 480p video. ``--no-diffusers`` skips part 1,
``--no-eval`` the VBench-dimension scores of part 2 (slow on large videos), ``--json PATH``
writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# NOTE: run as a script, this file's folder comes first on sys.path, where "eval" would be
# bench/eval.py rather than vdiff's eval package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.devices import (  # noqa: E402
    add_device_args,
    machine_line,
    peak_memory_mib,
    reset_peak,
    resolve,
    sdpa_peer,
    time_call,
)
from vdiff.attention.policy import AttentionPolicy  # noqa: E402
from vdiff.sampling import (  # noqa: E402
    ParallelGroups,
    SampleConfig,
    StepCacheConfig,
    VideoPipeline,
    initial_noise,
    latent_shape,
    load_components,
    make_pipeline,
    make_scheduler,
    to_uint8,
)

PROMPTS = [
    "a red circle moving left",
    "a blue square moving up over a green field",
    "a yellow triangle moving right",
    "a white star spinning on a black background",
]
NEGATIVE = "blurry, static, low quality"
DIMENSIONS = ["temporal_flickering", "dynamic_degree", "motion_smoothness"]


def write_tiny_wan(root: Path, **kwargs: Any) -> Path:
    """The tiny random Wan2.1 folder of the sampling tests (one builder for tests and bench)."""
    path = ROOT / "tests" / "pipelines" / "test_sample_wan.py"
    spec = importlib.util.spec_from_file_location("test_sample_wan", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path} is missing; the benchmark builds its weights with it")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_tiny_wan(root, **kwargs)


class FixedTextEncoder:
    """Hands out embeddings computed once, so both pipelines condition on identical tensors."""

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = table

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return torch.cat([self.table[p] for p in prompts])  # (B, L, D)

    def to(self, *args: object, **kwargs: object) -> FixedTextEncoder:
        return self


def timed(fn: Callable[[], Any], device: torch.device, peaks: list[float]) -> tuple[tuple[float, float], Any]:
    """((wall, CPU) seconds, result) of ``fn()``; CPU is this process's, less sensitive to other load.
    The call's peak memory (MiB, ``bench/devices.py``) is appended to ``peaks``."""
    reset_peak(device)
    wall, cpu, out = time_call(fn, device)
    peaks.append(peak_memory_mib(device))
    return (wall, cpu), out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] (peak-to-peak 2)."""
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def write_videos(folder: Path, videos: list[tuple[str, int, torch.Tensor]], fps: float) -> None:
    """(prompt, index, (3, T, H, W) video) -> ``folder/{prompt}-{index}.mp4``."""
    from eval.vbench import vbench_video_name
    from vdiff.io.video import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    for prompt, i, video in videos:
        write_mp4(folder / vbench_video_name(prompt, i), to_uint8(video), fps)


def eval_scores(folder: Path, out: Path) -> dict[str, float | None]:
    """Aggregates of the weight-free eval dimensions on the videos in ``folder`` (None: no video
    qualified, e.g. temporal_flickering scores only videos its static filter keeps)."""
    from eval.runner import evaluate

    ev = evaluate(folder, out, dimensions=DIMENSIONS, progress=False, report=False)
    return {n: d["aggregate"] for n, d in ev["info"]["dimensions"].items()}


def score_cell(score: float | None, dense: float | None) -> str:
    """``0.9312 (+0.0004)``: a score and its change from the dense run."""
    if score is None or dense is None:
        return f"{'—' if score is None else f'{score:.4f}':>22}"
    return f"{score:>12.4f} ({score - dense:+.4f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3, help="alternating runs of each pipeline/variant")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--frames", type=int, default=17, help="1 + a multiple of 4 (Wan VAE)")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--sampler", choices=["unipc", "euler"], default="unipc", help="unipc: what Wan2.1 ships")
    p.add_argument("--layers", type=int, default=4, help="transformer blocks of the random model")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument(
        "--cache-thresholds",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[0.05, 0.1, 0.2],
        help="comma-separated cache.threshold values, one TeaCache run each",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--keep", help="folder to keep the weights and videos in (default: a temporary one)")
    p.add_argument("--no-diffusers", action="store_true", help="skip part 1 (vdiff vs diffusers)")
    p.add_argument("--no-eval", action="store_true", help="skip the VBench-dimension scores of part 2")
    p.add_argument("--json", help="also write the figures as JSON here")
    add_device_args(p)
    args = p.parse_args(argv)
    device, dtype = resolve(args, p)
    with sdpa_peer(device, dtype, strict=False):  # NOTE: the fp32 VAE's attention cannot take flash
        return run(args, device, dtype)


def run(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> int:
    """The benchmark proper (``main`` parses the arguments and pins SDPA)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import WanPipeline

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vdiff-bench-sample-"))
    model_dir = work / "tiny-wan"
    if not (model_dir / "model_index.json").is_file():
        write_tiny_wan(
            model_dir, num_layers=args.layers, num_heads=args.heads, head_dim=args.head_dim, text_dim=64
        )
    dtype_name = str(dtype).removeprefix("torch.")
    cfg = SampleConfig(
        progress=False, sampler=args.sampler, shift=args.shift, device=device.type, dtype=dtype_name
    )
    transformer, text, vae = load_components(model_dir, cfg)
    size = dict(frames=args.frames, height=args.height, width=args.width)
    shape = latent_shape(vae, **size)  # (C, T', H', W')
    tokens = shape[1] * (shape[2] // 2) * (shape[3] // 2)
    print(machine_line(device, dtype))
    print(
        f"tiny Wan2.1: {args.layers} blocks, {args.heads} heads x {args.head_dim}, "
        f"{sum(p.numel() for p in transformer.parameters()) / 1e6:.2f} M transformer params; "
        f"video {args.frames}x{args.height}x{args.width} -> latents {shape} -> {tokens} tokens; "
        f"{args.steps} steps {args.sampler} shift {args.shift}, guidance {args.guidance}; "
        f"torch threads {torch.get_num_threads()}"
    )

    # Prompt embeddings: encoded once by vdiff, compared with WanPipeline.encode_prompt.
    with torch.no_grad():
        table = {q: text.encode([q]) for q in [*PROMPTS, NEGATIVE]}  # (1, 512, D) each
    from diffusers import WanTransformer3DModel

    # NOTE: loaded in its dtype, so diffusers keeps the modules it wants in float32 (norms, RoPE).
    ref_transformer = WanTransformer3DModel.from_pretrained(model_dir / "transformer", torch_dtype=dtype)
    ref_pipe = WanPipeline.from_pretrained(
        model_dir,
        transformer=ref_transformer,
        scheduler=make_scheduler(args.sampler, shift=args.shift),
        dtype=torch.float32,
    )
    ref_pipe.set_progress_bar_config(disable=True)
    ref_pipe.to(device)
    with torch.no_grad():
        pe, ne = ref_pipe.encode_prompt(
            PROMPTS[0], NEGATIVE, do_classifier_free_guidance=True, max_sequence_length=512
        )
    emb_diff = max(
        float((pe.cpu() - table[PROMPTS[0]]).abs().max()), float((ne.cpu() - table[NEGATIVE]).abs().max())
    )
    table = {q: e.to(device) for q, e in table.items()}
    print(f"prompt embeddings, vdiff TextEncoder vs WanPipeline.encode_prompt: max abs diff {emb_diff:.2e}")
    pipe: VideoPipeline = make_pipeline(
        transformer, FixedTextEncoder(table), vae, cfg=cfg, groups=ParallelGroups()
    )

    def run_vdiff(r: int, *, output_type: str = "video", **kw: Any) -> torch.Tensor:
        prompt = PROMPTS[r % len(PROMPTS)]
        kw = dict(
            seeds=[r],
            negative_prompt=NEGATIVE,
            steps=args.steps,
            guidance=args.guidance,
            sampler=args.sampler,
            shift=args.shift,
            output_type=output_type,
            **size,
            **kw,
        )
        return pipe([prompt], **kw)[0]

    def run_diffusers(r: int, *, output_type: str = "np") -> torch.Tensor:
        prompt = PROMPTS[r % len(PROMPTS)]
        with torch.no_grad():
            out = ref_pipe(
                prompt_embeds=table[prompt],
                negative_prompt_embeds=table[NEGATIVE],
                latents=initial_noise(shape, [r]),
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                num_frames=args.frames,
                height=args.height,
                width=args.width,
                output_type=output_type,
            ).frames[0]
        if output_type == "latent":
            return out.float().cpu()  # (C, T', H', W')
        return torch.from_numpy(out).permute(3, 0, 1, 2).float() * 2 - 1  # (3, T, H, W) in [-1, 1]

    result: dict[str, Any] = {"machine": machine_line(device, dtype), "tokens": tokens, "args": vars(args)}
    peaks: dict[str, list[float]] = {}
    if not args.no_diffusers:
        result["vs_diffusers"] = vs_diffusers(args, run_vdiff, run_diffusers, device, peaks)

    # 2. Step caching and sparse attention against vdiff's dense run.
    variants: dict[str, dict[str, Any]] = {
        "dense": {},
        **{
            f"teacache {t:g}": {"cache": StepCacheConfig(enabled=True, threshold=t)}
            for t in args.cache_thresholds
        },
        "sparse_sage": {"attention": AttentionPolicy(backend="sparse_sage")},
    }
    for kw in variants.values():  # warm-up
        run_vdiff(0, output_type="latent", **kw)
    vtimes: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    videos: dict[str, list[tuple[str, int, torch.Tensor]]] = {k: [] for k in variants}
    stats: dict[str, Any] = {}
    for r in range(args.repeat):
        for name, kw in list(variants.items())[:: 1 if r % 2 == 0 else -1]:
            t, lat = timed(
                lambda r=r, kw=kw: run_vdiff(r, output_type="latent", **kw),
                device,
                peaks.setdefault(name, []),
            )
            vtimes[name].append(t)
            if pipe.last_cache_stats is not None:
                stats[name] = pipe.last_cache_stats
            with torch.no_grad():
                video = vae.decode(lat[None]).float().clamp(-1, 1)[0].cpu()  # (3, T, H, W)
            videos[name].append((PROMPTS[r % len(PROMPTS)], r // len(PROMPTS), video))
    scores: dict[str, dict[str, float | None]] = {}
    for name in variants:
        folder = work / "videos" / name.replace(" ", "_")
        write_videos(folder, videos[name], fps=8.0)
        scores[name] = {} if args.no_eval else eval_scores(folder, work / "eval" / name.replace(" ", "_"))
    dense_t = [statistics.median(x) for x in zip(*vtimes["dense"])]  # wall, CPU
    print("\n## vdiff: step caching and sparse attention vs dense")
    print("(time: the denoising loop alone; errors and scores: decoded videos; peak MiB: of the loop)")
    dims = [] if args.no_eval else DIMENSIONS
    header = (
        f"{'variant':<16}{'wall s':>8}{'CPU s':>8}{'speedup':>9}{'(CPU)':>7}"
        f"{'max err':>9}{'mean err':>10}{'PSNR dB':>9}{'peak MiB':>10}"
    )
    print(header + "".join(f"{d:>22}" for d in dims))
    result["variants"] = {}
    for name in variants:
        errs = [
            (float((v - d).abs().max()), float((v - d).abs().mean()), psnr(v, d))
            for (_, _, v), (_, _, d) in zip(videos[name], videos["dense"])
        ]
        med_t = [statistics.median(x) for x in zip(*vtimes[name])]  # wall, CPU
        fig = {
            "wall_s": med_t[0],
            "cpu_s": med_t[1],
            "speedup": dense_t[0] / med_t[0],
            "speedup_cpu": dense_t[1] / med_t[1],
            "max_err": max(e[0] for e in errs),
            "mean_err": statistics.mean(e[1] for e in errs),
            "min_psnr_db": min(e[2] for e in errs),
            "peak_mib": max(peaks[name]),
            "scores": scores[name],
        }
        result["variants"][name] = fig
        row = (
            f"{name:<16}{fig['wall_s']:>8.3f}{fig['cpu_s']:>8.3f}{fig['speedup']:>9.2f}{fig['speedup_cpu']:>7.2f}"
            f"{fig['max_err']:>9.4f}{fig['mean_err']:>10.5f}{fig['min_psnr_db']:>9.1f}{fig['peak_mib']:>10.0f}"
        )
        row += "".join(score_cell(scores[name][d], scores["dense"][d]) for d in dims)
        print(row)
    for name, (computed, skipped) in stats.items():
        print(f"{name}: blocks computed on {computed}, skipped on {skipped} branch-steps (last run)")
    print(f"\nfiles under {work}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0


def vs_diffusers(
    args: argparse.Namespace,
    run_vdiff: Callable[..., torch.Tensor],
    run_diffusers: Callable[..., torch.Tensor],
    device: torch.device,
    peaks: dict[str, list[float]],
) -> dict[str, Any]:
    """Part 1: vdiff vs diffusers, alternating, on the denoising loop alone and end to end."""
    run_vdiff(0), run_diffusers(0)  # warm-up
    modes = {"denoising": ("latent", "latent"), "denoising + decode": ("video", "np")}
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    diffs: dict[str, list[float]] = {m: [] for m in modes}
    runs = {"vdiff": run_vdiff, "diffusers": run_diffusers}
    for r in range(args.repeat):
        for mode, kinds in modes.items():
            out = {}
            # NOTE: the order flips every repeat (ABBA), so neither side always runs first.
            for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                kind = kinds[0] if name == "vdiff" else kinds[1]
                t, out[name] = timed(
                    lambda r=r, fn=runs[name], kind=kind: fn(r, output_type=kind),
                    device,
                    peaks.setdefault(f"{mode}: {name}", []),
                )
                times.setdefault((mode, name), []).append(t)
            diffs[mode].append(float((out["vdiff"].float().cpu() - out["diffusers"]).abs().max()))
    print("\n## vdiff vs diffusers WanPipeline")
    result: dict[str, Any] = {}
    for mode in modes:
        print(f"{mode}:")
        med = {}
        for n in runs:
            wall, cpu = zip(*times[(mode, n)])
            med[n] = (statistics.median(wall), statistics.median(cpu))
            peak = max(peaks[f"{mode}: {n}"])
            result[f"{mode}: {n}"] = {"wall_s": med[n][0], "cpu_s": med[n][1], "peak_mib": peak}
            print(
                f"  {n:<10} median {med[n][0]:.3f} s wall, {med[n][1]:.3f} s CPU, peak {peak:.0f} MiB; "
                f"walls {[round(t, 3) for t in wall]}"
            )
        pairs = [a[0] / b[0] for a, b in zip(times[(mode, "vdiff")], times[(mode, "diffusers")])]
        print(
            f"  time ratio vdiff / diffusers: {med['vdiff'][0] / med['diffusers'][0]:.3f} wall, "
            f"{med['vdiff'][1] / med['diffusers'][1]:.3f} CPU, {statistics.median(pairs):.3f} median of "
            "paired wall ratios  (goal <= 1.0)"
        )
        result[f"{mode}: ratio"] = med["vdiff"][0] / med["diffusers"][0]
    print(
        f"max abs diff: latents {max(diffs['denoising']):.2e}, "
        f"videos {max(diffs['denoising + decode']):.2e} (in [-1, 1])"
    )
    result["max_diff_latents"], result["max_diff_videos"] = (
        max(diffs["denoising"]),
        max(diffs["denoising + decode"]),
    )
    return result


if __name__ == "__main__":
    sys.exit(main())
