"""Where a sparse backend's time goes: torch.profiler over one call, top operators by self CPU time.

    python bench/profile_attention.py [--backend sparse_sage] [--tokens 16384] [--head-dim 128]
                                      [--order tiles|raster] [--cdf 0.99] [--kernel torch] [--top 15]

Inputs: bench/attention.py's video-like q, k, v (12 heads, 32x32-token frames). One untimed
call first (one-off set-up), then one profiled call; also prints the mask prediction's own time
and fp32 SDPA's on the same tensors, as the peer.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention import FRAME, make_inputs

from vdiff.attention import attention
from vdiff.attention.mask import predict_block_mask
from vdiff.attention.token_order import tile_order


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="sparse_sage", choices=["sage", "sparse", "sparse_sage"])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--order", default="tiles", choices=["tiles", "raster"])
    ap.add_argument("--cdf", type=float, default=0.99)
    ap.add_argument("--kernel", default="torch", choices=["auto", "torch", "fused", "tiled"])
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    q, k, v = make_inputs("video", tokens=args.tokens, head_dim=args.head_dim, dtype=torch.float32)
    if args.order == "tiles":
        idx = tile_order((args.tokens // (FRAME[0] * FRAME[1]), *FRAME), tile=8)
        q, k, v = (x.index_select(2, idx).contiguous() for x in (q, k, v))
    opts: dict = {"kernel": args.kernel}
    if args.backend != "sage":
        opts["cdf_threshold"] = args.cdf
    attention(q, k, v, backend=args.backend, **opts)
    t0 = time.perf_counter()
    attention(q, k, v)
    t_sdpa = time.perf_counter() - t0
    t0 = time.perf_counter()
    mask = predict_block_mask(q, k, scale=args.head_dim**-0.5, cdf_threshold=args.cdf)
    t_mask = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        attention(q, k, v, backend=args.backend, **opts)
        t_call = time.perf_counter() - t0
    print(
        f"# {args.backend} N={args.tokens} D={args.head_dim} {args.order} cdf {args.cdf} "
        f"kernel {args.kernel}: "
        f"{t_call:.2f} s (profiled), fp32 SDPA {t_sdpa:.2f} s, mask prediction alone {t_mask:.2f} s, "
        f"kept {float(mask.float().mean()):.3f}"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
