"""Benchmark: forward time and peak memory of eval's feature models on random weights at their real
input sizes, on ``--device`` in ``--dtype``.

* ``clip_b32``: the image tower of ``eval.models.clip`` (what ``CLIP.encode_image`` runs) on
  (B, 3, 224, 224) frames
  (background_consistency; VBench's CLIP ViT-B/32). Peer: transformers'
  ``CLIPVisionModelWithProjection`` of the same architecture (what ``eval/metrics/features.py``
  loads), random weights too; ratio = vdiff's median over the peer's (< 1: faster).
* ``clip_l14``: the same for CLIP ViT-L/14 (aesthetic_quality), against transformers' ViT-L/14.
* ``viclip_l14``: the vision tower of ``eval.models.viclip.viclip()`` (what ``encode_vision``
  runs) on 8 frames of 224x224, (1, 3, 8, 224, 224) (overall_consistency's ViCLIP-L/14). No
  peer in this run (VBench's own ViCLIP needs its repository).
* ``dino_vitb16``: transformers' ``ViTModel`` (DINO ViT-B/16, subject_consistency) on frames of
  a 480x832 video resized as ``eval.frames.dino_transform`` does (shorter side 224: 224x388),
  interpolating position embeddings. No peer: it is transformers' model itself.

Models run under ``torch.no_grad()``; each timing is a median of ``--repeat`` calls after one
warm-up call, with the peak memory of a call (CUDA max allocated, or peak RSS on CPU; see
``bench/devices.py``). Implementations alternate within each repeat.

    python bench/eval_models.py [--models clip_b32,clip_l14,viclip_l14,dino_vitb16] [--batch 16]
                                [--repeat 5] [--device cuda] [--dtype bfloat16] [--quick] [--json PATH]

``--quick`` keeps the input sizes but builds each model with one layer (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
# NOTE: run as a script, this file's folder comes first on sys.path, where "eval" would be
# bench/eval.py rather than vdiff's eval package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
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

CLIP_ARCH = {
    # embed, vision layers, width, patch, text layers, text width, text heads
    "clip_b32": dict(embed_dim=512, vision_layers=12, vision_width=768, vision_patch_size=32,
                     transformer_layers=12, transformer_width=512, transformer_heads=8),
    "clip_l14": dict(embed_dim=768, vision_layers=24, vision_width=1024, vision_patch_size=14,
                     transformer_layers=12, transformer_width=768, transformer_heads=12),
}  # fmt: skip
MODELS = ("clip_b32", "clip_l14", "viclip_l14", "dino_vitb16")


def vdiff_clip(name: str, *, layers: int | None) -> nn.Module:
    """The image tower (``encode_image``'s module) of eval.models.clip.CLIP of ``name``'s architecture;
    ``layers`` overrides the tower depths."""
    from eval.models.clip import CLIP

    arch = dict(CLIP_ARCH[name])
    if layers is not None:
        arch.update(vision_layers=layers, transformer_layers=layers)
    return CLIP(image_resolution=224, context_length=77, vocab_size=49408, **arch).visual


def transformers_clip(name: str, *, layers: int | None) -> nn.Module:
    """transformers' CLIP vision tower + projection of the same architecture."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    arch = CLIP_ARCH[name]
    width = arch["vision_width"]
    cfg = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers or arch["vision_layers"],
        num_attention_heads=width // 64,
        image_size=224,
        patch_size=arch["vision_patch_size"],
        projection_dim=arch["embed_dim"],
        hidden_act="quick_gelu",
    )
    return CLIPVisionModelWithProjection(cfg)


def build_cases(
    names: list[str], *, batch: int, layers: int | None
) -> list[tuple[str, str, tuple[int, ...], dict[str, Callable[[], nn.Module]], Callable]]:
    """(model, what, input shape, {implementation: builder}, forward(model, x)) for each name."""
    cases = []
    for name in names:
        if name in CLIP_ARCH:
            builders = {
                "vdiff": lambda n=name: vdiff_clip(n, layers=layers),
                "transformers": lambda n=name: transformers_clip(n, layers=layers),
            }

            def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
                if hasattr(model, "conv1"):  # eval.models.clip.VisionTransformer: what encode_image calls
                    return model(x)
                return model(pixel_values=x).image_embeds

            cases.append((name, "image features", (batch, 3, 224, 224), builders, forward))
        elif name == "viclip_l14":
            from eval.models.viclip import VICLIP_FRAMES, viclip

            kw = {} if layers is None else dict(vision_layers=layers, text_layers=layers)
            # NOTE: the vision tower alone, on (B, 3, T, R, R) as ViCLIP.encode_vision hands it over
            cases.append(
                (name, "video features", (1, 3, VICLIP_FRAMES, 224, 224),
                 {"vdiff": lambda kw=kw: viclip(**kw).vision_encoder}, lambda m, x: m(x))
            )  # fmt: skip
        elif name == "dino_vitb16":
            from transformers import ViTConfig, ViTModel

            from eval.frames import shorter_side_size

            h, w = shorter_side_size(480, 832, 224)
            cfg = ViTConfig(
                patch_size=16, image_size=224, num_hidden_layers=layers or 12, add_pooling_layer=False
            )
            cases.append(
                (name, "CLS features", (batch, 3, h, w), {"transformers": lambda cfg=cfg: ViTModel(cfg)},
                 lambda m, x: m(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0])
            )  # fmt: skip
    return cases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)}")
    p.add_argument("--batch", type=int, default=16, help="frames per call (CLIP, DINO)")
    p.add_argument("--repeat", type=int, default=5, help="timed calls of each model (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--quick", action="store_true", help="one layer per tower, batch 2, 1 repeat (a smoke run)"
    )
    p.add_argument("--json", help="also write the rows as JSON here")
    add_device_args(p)
    args = p.parse_args(argv)
    device, dtype = resolve(args, p)
    names = [n for n in args.models.split(",") if n]
    if bad := [n for n in names if n not in MODELS]:
        p.error(f"--models: unknown {bad}; choose from {list(MODELS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, repeat = (2, 1) if args.quick else (args.batch, args.repeat)
    print(f"{machine_line(device, dtype)}; median of {repeat} calls; random weights")
    rows: list[dict[str, Any]] = []
    with torch.no_grad(), sdpa_peer(device, dtype, strict=False):
        for name, what, shape, builders, forward in build_cases(
            names, batch=batch, layers=1 if args.quick else None
        ):
            torch.manual_seed(0)
            x = torch.randn(shape, device=device, dtype=dtype)
            models = {impl: build().to(device, dtype).eval() for impl, build in builders.items()}
            for m in models.values():
                forward(m, x)  # warm-up
            walls: dict[str, list[float]] = {impl: [] for impl in models}
            peaks: dict[str, float] = dict.fromkeys(models, 0.0)
            for r in range(repeat):
                for impl in list(models)[:: 1 if r % 2 == 0 else -1]:
                    reset_peak(device)
                    wall, _, _ = time_call(lambda m=models[impl], f=forward, x=x: f(m, x), device)
                    walls[impl].append(wall)
                    peaks[impl] = max(peaks[impl], peak_memory_mib(device))
            base = statistics.median(walls["transformers"]) if len(models) > 1 else None
            for impl, m in models.items():
                ms = statistics.median(walls[impl]) * 1e3
                rows.append({
                    "model": name, "impl": impl, "what": what, "input": list(shape),
                    "params_m": round(sum(q.numel() for q in m.parameters()) / 1e6, 1), "ms": ms,
                    "items_per_s": shape[0] / ms * 1e3, "peak_mib": peaks[impl],
                    "ratio": ms / (base * 1e3) if base else None,
                })  # fmt: skip
            del models
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(
        "| model | implementation | input | params | ms / call | items/s | peak MiB | ratio vs transformers |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(
            f"| {r['model']} | {r['impl']} | {'x'.join(map(str, r['input']))} | {r['params_m']} M "
            f"| {r['ms']:.1f} | {r['items_per_s']:.1f} | {r['peak_mib']:.0f} | {ratio} |"
        )
    print(
        "ratio: vdiff's median over transformers' (same architecture, random weights; < 1: faster). "
        "peak MiB: CUDA max allocated during a call, or the process's peak RSS on CPU."
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": machine_line(device, dtype), "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
