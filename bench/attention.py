"""Benchmark: the attention backends (sage, sparse, sparse_sage) against torch SDPA, same run.

For each token count N, head dim D and kind of input, with batch 1 and 12 heads:

* ``video``: :func:`vdiff.attention.metrics.video_like_qkv` on a grid of N/1024 frames of
  32x32 tokens in raster order. q = k are random Fourier features of each token's (t, y, x)
  position (length scales 1.5 frames, 6 rows, 6 columns), so the logit between two tokens is β
  times a Gaussian kernel of their space-time distance (β from 6 to 14 over the heads), plus
  noise and per-head channel offsets; v is a smooth random field plus noise. Attention therefore
  concentrates near each token in space and time, as in a video DiT.
* ``random``: i.i.d. standard normal q, k, v (no structure: the sparse backends find no block
  to skip and compute everything).
* ``recorded``: q, k, v a trained model produced while sampling (``--activations FILE``, written
  by bench/attention_activations.py), one row set per recorded layer and step of the first
  seed; N and D are the recording's (``--tokens``/``--head-dims`` do not apply). Recorded in the
  model's raster order; ``+tiles`` rows use the recording's grid.

Headline rows run the sparse backends at ``--cdf`` (default 0.99, the default threshold, whose
accuracy the docs promise); ``--curve 0.7 0.9`` adds labelled rows ``sparse_sage@0.9`` etc. at
looser thresholds: a speed/accuracy curve, each speed next to its error, not a headline.
``--calibrate 0.02`` adds headline rows ``sparse_sage@cal0.02`` (and ``+tiles``): per-head
thresholds from :func:`vdiff.attention.calibrate.calibrate_layer` at that relative-L1 budget (its
safety margin included), calibrated on *other* inputs than the timed ones: video-like inputs of
another seed (other frequencies, noise, channel offsets and v), or, for recordings, the same
layer and step of the recording's second seed. The error printed is the one on the timed inputs,
so the row shows whether the budget held on inputs the calibration did not see.

Every backend is timed on the same tensors; within each repeat the backends run one after
the other in an order that rotates between repeats, and the median wall time is reported with
its ratio to SDPA's median (``x SDPA`` > 1: faster than SDPA). ``kept blocks`` is the fraction
of (Q block, K block) pairs computed: the predicted mask on the tiled path (INT8 on a CPU with VNNI
and no AMX, see ``vdiff.attention.execute.torch_path``) and on CUDA; on the fused path the mask
widened to the union over each run of ``Q_GROUP`` Q blocks, 1 when that keeps more than
``DENSE_ABOVE`` and the kernel makes one dense call; 1 for the dense backends. On video inputs the sparse
backends also run on the same tokens in tile order (``+tiles``: permuted once before timing, as
the model's embed does with ``attention.token_order=auto``; K blocks are then 8x8 tiles of a
frame instead of raster strips, see ``vdiff.attention.token_order``). Accuracy
(cosine similarity, relative L1, RMSE; :func:`vdiff.attention.metrics.attention_error`) is
against fp32 dense attention, which is torch SDPA on fp32 inputs (the same maths as
``dense_reference``, tiled, so N = 16384 fits in memory; the test suite checks the two agree).

    python bench/attention.py [--quick] [--repeat N] [--tokens 4096 16384] [--head-dims 128 64]
                              [--inputs video random recorded] [--activations FILE] [--threads N]
                              [--cdf 0.99] [--curve CDF ...] [--calibrate BUDGET] [--kernel auto]
                              [--json PATH]
                              [--device cpu|cuda] [--dtype float32|bfloat16]

N = 16384 at D = 128 costs tens of seconds per dense call on 2 CPU cores; ``--quick`` runs
each backend once (no warm-up repeat).

``--device cuda --dtype bfloat16 --tokens 16384 32768`` runs the same on a GPU: the backends take
their Triton kernels (:mod:`vdiff.attention.triton_kernels`) and ``sdpa`` is pinned to SDPA's
flash backend, the peer of the GPU goal (>= 2x at N = 32768, cosine >= 0.99).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vdiff.attention import attention, native_cpu
from vdiff.attention.calibrate import calibrate_layer
from vdiff.attention.execute import torch_path
from vdiff.attention.fused import Q_GROUP, fused_fraction, group_rows
from vdiff.attention.mask import predict_block_mask
from vdiff.attention.metrics import attention_error, video_like_qkv
from vdiff.attention.record import load_recordings
from vdiff.attention.thresholds import SparseThresholds
from vdiff.attention.token_order import tile_order

HEADS = 12
FRAME = (32, 32)
"""tokens per frame (rows, columns) of the video-like grid"""
BACKENDS = ("sdpa", "sage", "sparse", "sparse_sage")
SPARSE = ("sparse", "sparse_sage")
TILED = ("sparse+tiles", "sparse_sage+tiles")
"""the sparse backends on the same tokens in tile order, as the model feeds them with
attention.token_order=auto: K blocks are 8x8 tiles (video inputs only)"""


@dataclass
class Row:
    """One backend on one input."""

    tokens: int
    head_dim: int
    inputs: str
    backend: str
    seconds: float
    speedup: float
    kept: float
    cos_sim: float
    rel_l1: float
    rmse: float


def make_inputs(
    kind: str, *, tokens: int, head_dim: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """(1, HEADS, tokens, head_dim) contiguous q, k, v of the named kind, on ``device``."""
    made = _make_inputs(kind, tokens=tokens, head_dim=head_dim, dtype=dtype, seed=seed)
    return tuple(x.to(device) for x in made)


def _make_inputs(
    kind: str, *, tokens: int, head_dim: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    if kind == "video":
        per_frame = FRAME[0] * FRAME[1]
        if tokens % per_frame:
            raise SystemExit(f"--tokens {tokens}: video inputs need a multiple of {per_frame} (32x32 frames)")
        return video_like_qkv(
            batch=1,
            heads=HEADS,
            frames=tokens // per_frame,
            height=FRAME[0],
            width=FRAME[1],
            head_dim=head_dim,
            dtype=dtype,
            seed=seed,
        )
    if kind == "random":
        g = torch.Generator().manual_seed(seed)
        return tuple(torch.randn(1, HEADS, tokens, head_dim, generator=g).to(dtype) for _ in range(3))
    raise SystemExit(f"--inputs: unknown kind {kind!r}; use video or random")


KERNEL = "torch"
"""the sparse backends' ``kernel`` option in the timed calls (``--kernel``); "best" (the default on
a CPU where the native kernel builds): "native" for each call it can run, else "torch" (e.g.
``sparse``, which has no INT8 scores, or head dims that are not multiples of 64)"""


def resolve_kernel(kernel: str, q: torch.Tensor, *, name: str) -> str:
    """The ``kernel`` option a call of backend ``name`` on q gets ("best" resolved)."""
    if kernel != "best":
        return kernel
    reason = native_cpu.supports(
        q, q_block=128, k_block=64, pv_dtype="bf16", quantize=name != "sparse", lam=None
    )  # fmt: skip
    return "native" if reason is None else "torch"


def variant(
    label: str, *, cdf: float, tokens: int, calibrated: dict[str, SparseThresholds] | None = None
) -> tuple[str, dict]:
    """(backend, keyword options) of a row label: ``name[+tiles][@cdf|@calBUDGET]`` (``@`` overrides
    ``cdf``; ``@cal`` rows take their thresholds from ``calibrated``, keyed by label)."""
    name, _, at = label.replace("+tiles", "").partition("@")
    if at.startswith("cal"):
        opts: dict = {"thresholds": (calibrated or {})[label], "layer_index": 0}
    else:
        opts = {"cdf_threshold": float(at) if at else cdf} if name in SPARSE else {}
    if name != "sdpa":
        opts["kernel"] = KERNEL
    return name, opts


def tile_index(tokens: int) -> torch.Tensor:
    """(tokens,) raster index of each token in tile order (the model's order for sparse backends)."""
    return tile_order((tokens // (FRAME[0] * FRAME[1]), *FRAME), tile=8)


def computed_fraction(q: torch.Tensor, k: torch.Tensor, *, name: str, opts: dict) -> float:
    """Fraction of (Q block, K block) pairs the sparse backend ``name`` computes with these options."""
    cdf = opts.get("cdf_threshold")
    if "thresholds" in opts:
        cdf = torch.tensor(opts["thresholds"].for_layer(0, heads=q.shape[1]).cdf_threshold)
    mask = predict_block_mask(q, k, scale=q.shape[-1] ** -0.5, cdf_threshold=cdf)
    kernel = resolve_kernel(opts.get("kernel", "auto"), q, name=name)
    if q.is_cuda or kernel == "native" or torch_path(kernel, q, quantize=name == "sparse_sage") == "tiled":
        return float(mask.float().mean())  # Triton, native and tiled: exactly the mask
    # NOTE: the fused path computes, for each run of Q_GROUP Q blocks, the union of their K blocks,
    # and every block (one dense call) when that union keeps more than DENSE_ABOVE of them.
    return fused_fraction(group_rows(mask, group=Q_GROUP))


def recorded_cases(path: Path) -> tuple[list, dict]:
    """The recordings in ``path`` read once: those of the first seed (every layer at every recorded
    step; the timed cases) and, keyed by (layer, step), those of the second seed (the held-out
    calibration inputs of ``--calibrate``; empty when the file holds one seed)."""
    try:
        records, _ = load_recordings(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--activations {path}: {e}") from e
    seeds = list(dict.fromkeys(r.tag.get("seed") for r in records))
    timed_cases = [r for r in records if r.tag.get("seed") == seeds[0]]
    second = seeds[1] if len(seeds) > 1 else object()  # a value no tag holds
    held = {(r.layer, r.tag.get("step")): r for r in records if r.tag.get("seed") == second}
    return timed_cases, held


def calibrated_thresholds(
    qkv: tuple[torch.Tensor, ...], *, budget: float, grid: tuple[int, int, int] | None
) -> SparseThresholds:
    """sparse_sage's per-head thresholds at relative-L1 ``budget`` on ``qkv`` (in tile order when
    ``grid``), as one layer (index 0) of a thresholds file."""
    q, k, v = qkv
    if grid is not None:
        idx = tile_order(grid, tile=8).to(q.device)
        q, k, v = (x.index_select(2, idx) for x in (q, k, v))
    layer = calibrate_layer(q, k, v, l1_budget=budget, backend="sparse_sage")
    return SparseThresholds(
        backend="sparse_sage", l1_budget=budget, q_block=128, k_block=64, sim_threshold=0.3, layers={0: layer}
    )


def timed(fn, *args, **kwargs) -> tuple[float, torch.Tensor]:
    """(wall seconds, result) of one call (CUDA work waited for)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def run_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, name: str, opts: dict) -> torch.Tensor:
    """One attention call; on CUDA, ``sdpa`` is pinned to SDPA's flash backend (the GPU peer)."""
    if q.is_cuda and name == "sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return attention(q, k, v, backend=name, **opts)
    if "kernel" in opts:
        opts = {**opts, "kernel": resolve_kernel(opts["kernel"], q, name=name)}
    return attention(q, k, v, backend=name, **opts)


def bench_case(
    kind: str,
    *,
    tokens: int,
    head_dim: int,
    repeat: int,
    cdf: float,
    dtype: torch.dtype,
    device: str = "cpu",
    curve: tuple[float, ...] = (),
    qkv: tuple[torch.Tensor, ...] | None = None,
    grid: tuple[int, int, int] | None = None,
    calibrate: float | None = None,
    held_out: tuple[torch.Tensor, ...] | None = None,
) -> list[Row]:
    """Time and score every backend on one input (``qkv`` when given); rows in BACKENDS order,
    then the tile-order rows, then the calibrated ones (``sparse_sage@calBUDGET``, thresholds
    calibrated on ``held_out``, by default video-like inputs of seed 1), then the curve's
    (``sparse_sage@CDF``)."""
    if qkv is None:
        q, k, v = make_inputs(kind, tokens=tokens, head_dim=head_dim, dtype=dtype, device=device)
    else:
        q, k, v = (x.to(device, dtype).contiguous() for x in qkv)
    if grid is None and kind == "video":
        grid = (tokens // (FRAME[0] * FRAME[1]), *FRAME)
    tiled = TILED if grid is not None else ()
    orders = ("", "+tiles")[: 1 + (grid is not None)]
    calibrated: dict[str, SparseThresholds] = {}
    if calibrate is not None:
        if held_out is None and qkv is None:
            held_out = make_inputs(kind, tokens=tokens, head_dim=head_dim, dtype=dtype, device=device, seed=1)
        if held_out is not None:
            for t in orders:
                start = time.perf_counter()
                calibrated[f"sparse_sage{t}@cal{calibrate:g}"] = calibrated_thresholds(
                    tuple(x.to(device, dtype) for x in held_out), budget=calibrate, grid=grid if t else None
                )
                print(f"# calibrated sparse_sage{t} in {time.perf_counter() - start:.1f} s", flush=True)
    extra = tuple(calibrated) + tuple(f"sparse_sage{t}@{c:g}" for c in curve for t in orders)
    labels = BACKENDS + tiled + extra
    # NOTE: the tile-order rows get the tokens permuted once, outside the timed call, as the
    # model's embed does; their outputs are compared in that order.
    idx = tile_order(grid, tile=8).to(device) if grid is not None else None
    inputs = {b: (q, k, v) for b in labels if "+tiles" not in b}
    inputs.update({b: tuple(x.index_select(2, idx) for x in (q, k, v)) for b in labels if "+tiles" in b})
    times: dict[str, list[float]] = {b: [] for b in labels}
    outs: dict[str, torch.Tensor] = {}
    for r in range(repeat):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for b in order:
            name, opts = variant(b, cdf=cdf, tokens=tokens, calibrated=calibrated)
            sec, out = timed(run_backend, *inputs[b], name=name, opts=opts)
            times[b].append(sec)
            outs[b] = out
    # NOTE: SDPA on fp32 inputs is exact fp32 dense attention (flash tiling, fp32 accumulation).
    ref = outs["sdpa"] if dtype == torch.float32 else attention(q.float(), k.float(), v.float())
    ref = ref.float()
    sdpa_median = statistics.median(times["sdpa"])
    rows = []
    for b in labels:
        name, opts = variant(b, cdf=cdf, tokens=tokens, calibrated=calibrated)
        kept = computed_fraction(*inputs[b][:2], name=name, opts=opts) if name in SPARSE else 1.0
        err = attention_error(outs[b], ref.index_select(2, idx) if "+tiles" in b else ref)
        med = statistics.median(times[b])
        rows.append(
            Row(
                q.shape[2],
                q.shape[3],
                kind,
                b,
                med,
                sdpa_median / med,
                kept,
                err.cos_sim,
                err.rel_l1,
                err.rmse,
            )
        )
    return rows


def format_table(rows: list[Row]) -> str:
    """A Markdown table of the rows."""
    lines = [
        "| N | D | inputs | backend | time (s) | x SDPA | kept blocks | cos sim | rel L1 | RMSE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.tokens} | {r.head_dim} | {r.inputs} | {r.backend} | {r.seconds:.3f} | {r.speedup:.2f} | "
            f"{r.kept:.3f} | {r.cos_sim:.5f} | {r.rel_l1:.4f} | {r.rmse:.2e} |"
        )
    return "\n".join(lines)


def goal_lines(rows: list[Row], *, device: str = "cpu") -> list[str]:
    """Issue 15's goals for the headline rows: sparse_sage >= 2x SDPA (CPU: N = 16384; CUDA: SDPA
    flash, N = 32768) at cosine >= 0.999 and relative L1 <= 0.02, on video and recorded inputs;
    sage >= 1.5x."""
    out = []
    goal_n = 32768 if device == "cuda" else 16384
    for r in rows:
        if ("@" in r.backend and "@cal" not in r.backend) or r.inputs == "random":
            continue
        if r.backend.startswith("sparse_sage") and (r.tokens == goal_n or r.inputs.startswith("recorded")):
            met = r.speedup >= 2.0 and r.cos_sim >= 0.999 and r.rel_l1 <= 0.02
            out.append(
                f"goal (N={r.tokens}, D={r.head_dim}, {r.inputs}): {r.backend} {r.speedup:.2f}x SDPA, "
                f"cos {r.cos_sim:.5f}, rel L1 {r.rel_l1:.4f} -> {'met' if met else 'NOT met'}"
            )
        if r.backend == "sage" and r.tokens == goal_n:
            out.append(
                f"goal (N={r.tokens}, D={r.head_dim}, {r.inputs}): sage {r.speedup:.2f}x SDPA -> "
                f"{'met' if r.speedup >= 1.5 else 'NOT met'}"
            )
    return out


def warm_up(*, head_dim: int, cdf: float, dtype: torch.dtype, device: str = "cpu") -> None:
    """One small call per backend (library loading, oneDNN kernels, Triton compiles) before timing."""
    q, k, v = make_inputs("video", tokens=1024, head_dim=head_dim, dtype=dtype, device=device)
    for b in BACKENDS:
        name, opts = variant(b, cdf=cdf, tokens=1024)
        run_backend(q, k, v, name=name, opts=opts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one timed call per backend and case")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per backend and case (median reported)")
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384], help="sequence lengths N")
    p.add_argument("--head-dims", type=int, nargs="+", default=[128, 64], help="head dims D")
    p.add_argument(
        "--inputs", nargs="+", default=["video", "random"], help="input kinds: video, random, recorded"
    )
    p.add_argument(
        "--activations",
        type=Path,
        default=None,
        help="recorded q, k, v (bench/attention_activations.py) for --inputs recorded",
    )
    p.add_argument(
        "--curve",
        type=float,
        nargs="*",
        default=[],
        help="also run sparse_sage at these looser cdf thresholds (labelled speed/accuracy rows)",
    )
    p.add_argument(
        "--calibrate",
        type=float,
        default=None,
        metavar="BUDGET",
        help="also run sparse_sage calibrated per head at this relative-L1 budget on held-out inputs "
        "(headline rows sparse_sage@calBUDGET)",
    )
    p.add_argument(
        "--kernel",
        choices=["auto", "native", "torch", "fused", "tiled"],
        default=None,
        help="kernel of sage/sparse/sparse_sage (default: native for each call it can run, else torch; "
        "torch and native: the sparse path always; auto: may fall back to SDPA)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--cdf", type=float, default=0.99, help="cdf_threshold of the headline sparse rows (default 0.99)"
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="q, k, v dtype")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="cuda: Triton kernels vs SDPA flash"
    )
    args = p.parse_args(argv)
    global KERNEL
    if args.device == "cuda":
        KERNEL = "auto"
    elif args.kernel is None:
        KERNEL = "best" if native_cpu.unavailable_reason() is None else "torch"
    else:
        KERNEL = args.kernel
    if "recorded" in args.inputs and args.activations is None:
        raise SystemExit("--inputs recorded needs --activations FILE (python bench/attention_activations.py)")
    if args.device == "cuda" and (not torch.cuda.is_available() or args.dtype == "float32"):
        raise SystemExit("--device cuda needs a GPU and --dtype bfloat16 (SDPA flash is half-precision only)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeat = 1 if args.quick else args.repeat
    if repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    dtype = getattr(torch, args.dtype)
    torch.set_grad_enabled(False)
    machine = platform.processor() or platform.machine()
    if args.device == "cuda":
        machine = torch.cuda.get_device_name()
    print(
        f"# {machine}, "
        f"torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.dtype}, {HEADS} heads (video, random), "
        f"repeat {repeat}, cdf {args.cdf}, "
        f"kernel {KERNEL}, curve {list(curve) if (curve := tuple(args.curve)) else 'none'}",
        flush=True,
    )
    for d in sorted(set(args.head_dims)):
        warm_up(head_dim=d, cdf=args.cdf, dtype=dtype, device=args.device)
    rows: list[Row] = []
    curve = tuple(args.curve)
    for n in args.tokens:
        for d in args.head_dims:
            for kind in args.inputs:
                if kind == "recorded":
                    continue
                case = bench_case(
                    kind,
                    tokens=n,
                    head_dim=d,
                    repeat=repeat,
                    cdf=args.cdf,
                    dtype=dtype,
                    device=args.device,
                    curve=curve,
                    calibrate=args.calibrate,
                )
                print(format_table(case).split("\n", 2)[2], flush=True)
                rows.extend(case)
    if "recorded" in args.inputs:
        cases, held = recorded_cases(args.activations)
        if args.calibrate is not None and not held:
            print(f"# {args.activations} holds one seed: no held-out recording to calibrate on", flush=True)
        for rec in cases:
            other = held.get((rec.layer, rec.tag.get("step"))) if args.calibrate is not None else None
            case = bench_case(
                f"recorded L{rec.layer} s{rec.tag.get('step')}",
                tokens=rec.q.shape[2],
                head_dim=rec.q.shape[3],
                repeat=repeat,
                cdf=args.cdf,
                dtype=dtype,
                device=args.device,
                curve=curve,
                qkv=(rec.q, rec.k, rec.v),
                grid=tuple(rec.tag["grid"]) if "grid" in rec.tag else None,
                calibrate=args.calibrate if other is not None else None,
                held_out=None if other is None else (other.q, other.k, other.v),
            )
            print(format_table(case).split("\n", 2)[2], flush=True)
            rows.extend(case)
    print()
    print(format_table(rows))
    for line in goal_lines(rows, device=args.device):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
