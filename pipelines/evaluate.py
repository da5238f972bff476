"""``vdiff eval``: VBench-style scores and an HTML report for a folder of videos.

vdiff eval VIDEOS --out DIR [--dimensions a,b,...] [--prompts FILE] [--config YAML] [key=value ...]
vdiff eval --compare DIR_A DIR_B [--out DIR]   (warns on stderr when formulas or weights differ)
vdiff eval VIDEOS --static-filter --out DIR [--prompts SUITE] [--filter-scope temporal_flickering|all|FILE]
                  [--workers N]
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
        description=(
            "Score videos VBench-style; writes eval_results.json (VBench's results only), "
            "__vdiff__/eval_info.json, __vdiff__/substitute_results.json, report.html. "
            "--static-filter runs VBench's static filter instead (before temporal_flickering)."
        ),
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
    p.add_argument(
        "--static-filter",
        action="store_true",
        help="run VBench's static filter: copy static videos to DIR/filtered_videos (5 per prompt)",
    )
    p.add_argument(
        "--filter-scope",
        default="temporal_flickering",
        help="static filter scope: temporal_flickering (needs --prompts suite), all, or a JSON list",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="processes scoring (or, with --static-filter, checking) videos in parallel (config key workers)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return p


def _compare(dir_a: str, dir_b: str, out: str | None) -> int:
    from eval.report import compare_runs, render_compare
    from vdiff.io.files import atomic_write_text

    cmp = compare_runs(dir_a, dir_b)
    print(f"{'dimension':<26}{'A':>10}{'B':>10}{'B-A':>10}  {'95% CI A':<20}{'95% CI B':<20}")
    for n, r in cmp["dimensions"].items():
        cells = ["—" if r[k] is None else f"{r[k]:.4f}" for k in ("a", "b", "delta")]
        cis = ["—" if not r.get(k) else f"[{r[k][0]:.4f}, {r[k][1]:.4f}]" for k in ("ci_a", "ci_b")]
        print(f"{n:<26}{cells[0]:>10}{cells[1]:>10}{cells[2]:>10}  {cis[0]:<20}{cis[1]:<20}")
    for w in cmp["warnings"]:
        print(f"vdiff eval --compare: warning: {w}", file=sys.stderr)
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


def _static_filter(args: argparse.Namespace, overrides: list[str]) -> int:
    from eval.static_filter import run_static_filter
    from eval.vbench import load_prompts

    try:
        cfg = load_config(EvalConfig, args.config, overrides)
        suite = load_prompts(args.prompts) if args.prompts else None
        if suite is not None and not isinstance(suite, list):
            raise ConfigError("--static-filter --prompts must be a VBench suite (JSON list with 'dimension')")
        out = run_static_filter(
            args.videos, args.out, scope=args.filter_scope, suite=suite, config=cfg, progress=not args.quiet
        )
    except EXPECTED_ERRORS as e:
        return report_error("vdiff eval --static-filter", e, where=args.out)
    kept = sum(v["static_count"] for v in out["filtered"].values())
    where = Path(args.out) / "filtered_videos"
    print(f"static filter: kept {kept} videos in {where} [{out['info']['method']}]")
    if out["info"]["fewer_than_cap"]:
        print(f"note: {len(out['info']['fewer_than_cap'])} prompts have fewer than 5 static videos")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``vdiff eval``; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # NOTE: key=value words are config overrides wherever they appear (but for option values and
    # existing files); argparse sees the rest.
    options = {
        "--out": 1,
        "--dimensions": 1,
        "--prompts": 1,
        "--config": 1,
        "--compare": 2,
        "--filter-scope": 1,
        "--workers": 1,
    }
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
    if args.workers is not None:
        overrides.append(f"workers={args.workers}")
    if args.static_filter:
        return _static_filter(args, overrides)
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
    if info["score_script_zeros"]:
        print(
            f"note: VBench's cal_final_score.py would count {len(info['score_script_zeros'])} dimensions "
            f"absent from eval_results.json as 0: {', '.join(info['score_script_zeros'])}"
        )
    if not any(d["num_videos"] for d in info["dimensions"].values()):
        reason = info["skipped"][0]["reason"] if info["skipped"] else "no video fit a requested dimension"
        print(f"vdiff eval: no video in {args.videos} was scored ({reason})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
