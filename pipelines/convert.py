"""``vdiff convert``: Wan2.1 transformers between diffusers and vdiff formats, and training runs out of vdiff.

    vdiff convert wan SRC DST                  # diffusers WanTransformer3DModel folder -> vdiff folder
    vdiff convert --to diffusers SRC DST       # vdiff folder -> diffusers folder (from_pretrained loads it)
    vdiff convert --to diffusers RUN OUT       # training run (full or LoRA, merged) -> diffusers folder
    vdiff convert RUN OUT --weights model --step 200   # raw weights of step_00000200 -> vdiff folder
    vdiff convert --to diffusers --lora-adapters RUN OUT   # LoRA run -> pytorch_lora_weights.safetensors
    python -m pipelines.convert ...            # the same

SRC may also be a diffusers pipeline folder (its ``transformer/`` subfolder is used) or an original
Wan repository folder (Wan-AI/Wan2.1-T2V-1.3B: ``WanModel`` config.json + safetensors). Tensors
are streamed one safetensors shard at a time and copied bit for bit unless ``--dtype`` is given.
A training run (``config.yaml`` + ``checkpoints/``, what ``vdiff train`` writes) is rebuilt from
its config and one checkpoint (:mod:`vdiff.runs`): ``--step`` picks it (default: the latest
complete one), ``--weights`` the EMA or the raw weights (default: the EMA when the run kept one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

DTYPES = {"keep": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vdiff convert",
        usage="vdiff convert [wan] SRC DST [--to {vdiff,diffusers}] [--dtype DTYPE] [--overwrite]\n"
        "       vdiff convert RUN OUT [--to {vdiff,diffusers}] [--weights {auto,ema,model}] [--step N] "
        "[--lora-adapters] [--dtype DTYPE] [--overwrite]",
        description="Convert Wan2.1 text-to-video transformers between diffusers and vdiff formats, or "
        "export a vdiff training run (full fine-tune or LoRA) as a vdiff or diffusers model folder.",
        epilog="examples: `vdiff convert wan Wan2.1-T2V-1.3B-Diffusers/transformer out/wan13b`, "
        "`vdiff convert --to diffusers out/wan13b out/wan13b-diffusers`, "
        "`vdiff convert --to diffusers runs/tiny out/tiny-diffusers` (WanTransformer3DModel.from_pretrained "
        "loads it), `vdiff convert --to diffusers --lora-adapters runs/lora out/lora` "
        "(WanPipeline.load_lora_weights loads it)",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="[wan] SRC DST: source and destination folders; SRC may be a training run (config.yaml + "
        "checkpoints/)",
    )
    p.add_argument("--to", choices=["vdiff", "diffusers"], default="vdiff", help="output format")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="keep", help="cast tensors (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model in DST")
    run = p.add_argument_group("training runs (SRC = a vdiff train run folder)")
    run.add_argument(
        "--weights",
        choices=["auto", "ema", "model"],
        default=None,
        help="the checkpoint's EMA or raw trained weights (default auto: EMA when the run kept one)",
    )
    run.add_argument(
        "--step", type=int, default=None, metavar="N", help="checkpoint step_N (default: latest complete)"
    )
    run.add_argument(
        "--lora-adapters",
        action="store_true",
        help="LoRA run: write only the adapters, DST/pytorch_lora_weights.safetensors for diffusers' "
        "WanPipeline.load_lora_weights (needs --to diffusers); default: merge them into the model",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``vdiff convert``; return the exit code (2 with a one-line message on bad input)."""
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    paths = list(args.paths)
    if paths and paths[0] == "wan":
        paths = paths[1:]
    if len(paths) != 2:
        parser.error(f"expected SRC and DST folders, got {paths}")
    from vdiff.errors import EXPECTED_ERRORS, report_error
    from vdiff.models import convert_checkpoint
    from vdiff.runs import export_run, is_run

    src, dst = paths
    run_options = [
        name
        for name, given in (
            ("--weights", args.weights is not None),
            ("--step", args.step is not None),
            ("--lora-adapters", args.lora_adapters),
        )
        if given
    ]
    start = time.perf_counter()
    try:
        if is_run(src):
            summary = export_run(
                src,
                dst,
                to=args.to,
                weights=args.weights or "auto",
                step=args.step,
                lora_adapters=args.lora_adapters,
                dtype=DTYPES[args.dtype],
                overwrite=args.overwrite,
            )
        elif (Path(src) / ".metadata").is_file():
            raise ValueError(
                f"{src} is one checkpoint of a training run; pass the run folder and the step: "
                f"vdiff convert RUN OUT --step N"
            )
        elif run_options and Path(src).is_dir():
            raise ValueError(
                f"{', '.join(run_options)} apply to a training run (config.yaml + checkpoints/); "
                f"{src} is not one"
            )
        else:
            summary = convert_checkpoint(
                src, dst, to=args.to, dtype=DTYPES[args.dtype], overwrite=args.overwrite
            )
    except EXPECTED_ERRORS as e:
        return report_error("vdiff convert", e)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
