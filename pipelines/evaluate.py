"""``vdiff eval``: VBench-style scores and an HTML report for a folder of videos.

vdiff eval VIDEOS --out DIR [--dimensions a,b,...] [--prompts FILE] [--config YAML] [key=value ...]
vdiff eval --compare DIR_A DIR_B [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval.config import EvalConfig
from vdiff.config import ConfigError, describe, load_config, save_config, split_overrides
from vdiff.errors import EXPECTED_ERRORS, report_error


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


def check_videos_folder(videos: Path, prompts: str | None, cfg: EvalConfig) -> None:
    """Refuse (ConfigError naming the reason) a folder with no video to score, or none the prompts name."""
    from eval.runner import plan_videos
    from eval.vbench import VIDEO_EXTENSIONS, load_prompts

    if not videos.is_dir():
        raise ConfigError(f"VIDEOS {videos}: {'not a folder' if videos.exists() else 'no such folder'}")
    found = sorted(p.name for p in videos.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not found:
        raise ConfigError(f"VIDEOS {videos} holds no video ({', '.join(VIDEO_EXTENSIONS)}); nothing to score")
    if prompts is None:
        return
    planned, missing = plan_videos(
        videos, load_prompts(prompts), dimensions=list(cfg.dimensions), per_prompt=cfg.videos_per_prompt
    )
    if not planned and not missing:
        raise ConfigError(f"--prompts {prompts} asks for none of the dimensions {cfg.dimensions}")
    if not planned:
        raise ConfigError(
            f"VIDEOS {videos} holds none of the {len(missing)} videos --prompts {prompts} names (e.g. "
            f"{Path(missing[0]['video_path']).name!r}; it has {found[0]!r}, ...): sample them with those "
            "prompts, or check videos_per_prompt"
        )


def main(argv: list[str] | None = None) -> int:
    """Run ``vdiff eval``; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # NOTE: key=value words are config overrides wherever they appear (but for option values and
    # existing files); argparse sees the rest.
    options = {"--out": 1, "--dimensions": 1, "--prompts": 1, "--config": 1, "--compare": 2}
    words, overrides = split_overrides(argv, value_options=options)
    args = _parser().parse_args(words)
    if args.compare:
        try:
            return _compare(*args.compare, args.out)
        except EXPECTED_ERRORS as e:
            return report_error("vdiff eval --compare", e, where=args.out)
    if not args.videos or not args.out:
        print("vdiff eval: VIDEOS and --out DIR are required (or --compare DIR_A DIR_B)", file=sys.stderr)
        return 2
    if args.dimensions:
        overrides.append(f"dimensions=[{args.dimensions}]")
    from eval.registry import MissingDependencyError
    from eval.runner import evaluate

    try:
        cfg = load_config(EvalConfig, args.config, overrides)
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ConfigError(f"--out {args.out} is a file; name a folder for the results")
        check_videos_folder(Path(args.videos), args.prompts, cfg)
        out = evaluate(args.videos, args.out, prompts=args.prompts, config=cfg, progress=not args.quiet)
        save_config(cfg, f"{args.out}/config.yaml")
    except MissingDependencyError as e:
        print(f"vdiff eval: {e}", file=sys.stderr)
        return 2
    except EXPECTED_ERRORS as e:  # NOTE: MissingWeightsError is a FileNotFoundError
        return report_error("vdiff eval", e, where=args.out)
    info = out["info"]
    for name, d in info["dimensions"].items():
        value = "—" if d["aggregate"] is None else f"{d['aggregate']:.4f}"
        print(f"{name:<26}{value:>10}  {d['num_videos']} videos  [{d['method']}]")
    print(
        f"not scored: {len(info['skipped'])} unreadable, {len(info['missing'])} missing; "
        f"see {args.out}/report.html"
    )
    if not any(d["num_videos"] for d in info["dimensions"].values()):
        reason = info["skipped"][0]["reason"] if info["skipped"] else "no video fit a requested dimension"
        print(f"vdiff eval: no video in {args.videos} was scored ({reason})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
