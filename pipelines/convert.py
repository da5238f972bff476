"""``vdiff convert``: Wan2.1 transformer checkpoints between diffusers and vdiff formats.

    vdiff convert wan SRC DST                  # diffusers WanTransformer3DModel folder -> vdiff folder
    vdiff convert --to diffusers SRC DST       # vdiff folder -> diffusers folder (from_pretrained loads it)
    python -m pipelines.convert ...            # the same

SRC may also be a diffusers pipeline folder (its ``transformer/`` subfolder is used) or an original
Wan repository folder (Wan-AI/Wan2.1-T2V-1.3B: ``WanModel`` config.json + safetensors). Tensors
are streamed one safetensors shard at a time and copied bit for bit unless ``--dtype`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

DTYPES = {"keep": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vdiff convert",
        usage="vdiff convert [wan] SRC DST [--to {vdiff,diffusers}] [--dtype DTYPE] [--overwrite]",
        description="Convert Wan2.1 text-to-video transformers between diffusers and vdiff formats.",
        epilog="examples: `vdiff convert wan Wan2.1-T2V-1.3B-Diffusers/transformer out/wan13b`, "
        "`vdiff convert --to diffusers out/wan13b out/wan13b-diffusers`",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="[wan] SRC DST: source and destination folders")
    p.add_argument("--to", choices=["vdiff", "diffusers"], default="vdiff", help="output format")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="keep", help="cast tensors (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model in DST")
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
    from vdiff.models import convert_checkpoint

    start = time.perf_counter()
    try:
        summary = convert_checkpoint(
            paths[0], paths[1], to=args.to, dtype=DTYPES[args.dtype], overwrite=args.overwrite
        )
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"vdiff convert: {e}", file=sys.stderr)
        return 2
    summary["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
