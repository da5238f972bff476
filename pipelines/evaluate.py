"""``vdiff eval``: VBench-style scores and an HTML report for a folder of videos.

vdiff eval VIDEOS --out DIR [--dimensions a,b,...] [--prompts FILE] [--config YAML] [key=value ...]
vdiff eval --compare DIR_A DIR_B [--out DIR]
"""

from __future__ import annotations

import argparse
import sys

from eval.config import EvalConfig
from vdiff.config import ConfigError, describe, is_override, load_config, save_config


def _parser() -> argparse.ArgumentParser:
    from eval.registry import available_metrics

    dims = "\n".join(f"  {n:<24} {doc}" for n, doc in available_metrics().items())
    keys = "\n".join("  " + line for line in describe(EvalConfig))
    p = argparse.ArgumentParser(
        prog="vdiff eval",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score videos VBench-style; writes eval_results.json, eval_info.json, report.html.",
        epilog=f"dimensions:\n{dims}\n\nconfig keys (key=value):\n{keys}",
    )
    p.add_argument("videos", nargs="?", help="folder of videos")
    p.add_argument("--out", help="output folder")
    p.add_argument("--dimensions", help="comma-separated dimensions (overrides the config's list)")
    p.add_argument(
        "--prompts", help="VBench prompt suite JSON, {file: prompt} JSON map, or a text file of prompts"
    )
    p.add_argument("--config", help="YAML config (configs/eval.yaml)")
    p.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"), help="compare two eval output folders")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return p


def _compare(dir_a: str, dir_b: str, out: str | None) -> int:
    from pathlib import Path

    from eval.report import compare_runs, render_compare
    from vdiff.io.files import atomic_write_text

    cmp = compare_runs(dir_a, dir_b)
    print(f"{'dimension':<26}{'A':>10}{'B':>10}{'B-A':>10}")
    for n, r in cmp["dimensions"].items():
        cells = ["—" if r[k] is None else f"{r[k]:.4f}" for k in ("a", "b", "delta")]
        print(f"{n:<26}{cells[0]:>10}{cells[1]:>10}{cells[2]:>10}")
    if out:
        atomic_write_text(Path(out) / "compare.html", render_compare(cmp))
        print(f"wrote {Path(out) / 'compare.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``vdiff eval``; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # NOTE: key=value words are config overrides wherever they appear; argparse sees the rest.
    overrides = [a for a in argv if is_override(a)]
    args = _parser().parse_args([a for a in argv if not is_override(a)])
    if args.compare:
        return _compare(*args.compare, args.out)
    if not args.videos or not args.out:
        print("vdiff eval: VIDEOS and --out DIR are required (or --compare DIR_A DIR_B)", file=sys.stderr)
        return 2
    if args.dimensions:
        overrides.append(f"dimensions=[{args.dimensions}]")
    try:
        cfg = load_config(EvalConfig, args.config, overrides)
    except ConfigError as e:
        print(f"vdiff eval: {e}", file=sys.stderr)
        return 2
    from eval.registry import MissingDependencyError, MissingWeightsError
    from eval.runner import evaluate

    try:
        out = evaluate(args.videos, args.out, prompts=args.prompts, config=cfg, progress=not args.quiet)
    except (MissingWeightsError, MissingDependencyError, FileNotFoundError, ValueError) as e:
        print(f"vdiff eval: {e}", file=sys.stderr)
        return 2
    save_config(cfg, f"{args.out}/config.yaml")
    info = out["info"]
    for name, d in info["dimensions"].items():
        value = "—" if d["aggregate"] is None else f"{d['aggregate']:.4f}"
        print(f"{name:<26}{value:>10}  {d['num_videos']} videos  [{d['method']}]")
    print(
        f"not scored: {len(info['skipped'])} unreadable, {len(info['missing'])} missing; "
        f"see {args.out}/report.html"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
