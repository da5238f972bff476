"""``vdiff curate``: raw videos -> scene-cut, motion-filtered, captioned WebDataset shards.

    vdiff curate INPUT... --out DIR [--config configs/curate.yaml] [--workers N]
                 [--engine local|ray] [--samples] [key.sub=value ...]
    vdiff curate --report DIR

``python -m pipelines.curate`` runs the same ``main``. See docs/curation.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from data_prep.captions import caption_preflight
from data_prep.engine import (
    CurateConfig,
    VideoTask,
    default_workers,
    finalize,
    prepare_out_dir,
    run_local,
)
from data_prep.inputs import expand_inputs
from data_prep.report import render_html, summary_text
from data_prep.samples import sample_videos
from vdiff.config import describe, is_override, load_config, save_config


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; the epilog lists every config key with its default."""
    keys = "\n".join(f"  {line}" for line in describe(CurateConfig))
    p = argparse.ArgumentParser(
        prog="vdiff curate",
        description=(
            "Cut videos into scenes and clips, drop static, too fast, blurry, dark, small and "
            "duplicate clips, caption the rest and write them as WebDataset shards with "
            "manifest.parquet, report.json and report.html. Re-running the same command resumes."
        ),
        epilog=f"config keys (override with key.sub=value):\n{keys}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="video files, folders, or .txt lists of paths")
    p.add_argument("--out", type=Path, help="output folder (shards/, manifest.parquet, report.json, work/)")
    p.add_argument("--config", type=Path, help="YAML config (defaults: configs/curate.yaml)")
    p.add_argument("--workers", type=int, default=None, help="parallel video workers (default: all cores)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="process pool or Ray Data")
    p.add_argument("--samples", action="store_true", help="add the bundled sample videos")
    p.add_argument("--report", type=Path, metavar="DIR", help="only (re)render DIR/report.html and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``vdiff curate``; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if is_override(a)]
    parser = build_parser()
    args = parser.parse_args([a for a in argv if not is_override(a)])

    if args.report is not None:
        try:
            print(render_html(args.report))
        except FileNotFoundError as e:
            print(f"vdiff curate: {e}", file=sys.stderr)
            return 2
        return 0
    if args.out is None:
        parser.error("--out DIR is required")
    if not args.inputs and not args.samples:
        parser.error("give at least one INPUT (file, folder or list) or --samples")
    workers = args.workers if args.workers is not None else default_workers()
    if workers < 1:
        parser.error(f"--workers must be >= 1, got {workers}")

    # Everything that can be checked is checked before any video is touched.
    try:
        cfg = load_config(CurateConfig, args.config, overrides)
        caption_preflight(cfg.caption)
    except ValueError as e:  # ConfigError and the stages' own validate() errors
        print(f"vdiff curate: config error: {e}", file=sys.stderr)
        return 2
    if args.engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            print("vdiff curate: --engine ray needs Ray: pip install 'vdiff[ray]'", file=sys.stderr)
            return 2

    started = time.perf_counter()
    out: Path = args.out
    prepare_out_dir(out)
    save_config(cfg, out / "config.yaml")
    extra = sample_videos(out / "samples") if args.samples else []
    items = expand_inputs(args.inputs, extra=extra)
    work = out / "work"
    todo = [(i, item.path) for i, item in enumerate(items) if not item.error]
    tasks = [VideoTask(index=i, path=path, work_dir=work, cfg=cfg) for i, path in todo]
    if args.engine == "ray":
        from data_prep.ray_engine import run_ray

        summaries = run_ray(tasks, workers=workers)
    else:
        summaries = run_local(tasks, workers=workers, progress=not args.no_progress)
    report = finalize(items, summaries, cfg=cfg, out_dir=out, started=started)
    render_html(out)
    print(summary_text(report))
    print(f"  outputs: {out}/shards, {out}/manifest.parquet, {out}/report.json, {out}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
