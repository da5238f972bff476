"""``vdiff curate``: raw videos -> scene-cut, motion-filtered, captioned WebDataset shards.

    vdiff curate INPUT... --out DIR [--config configs/curate.yaml] [--workers N]
                 [--engine local|ray] [--samples] [--overwrite] [--replace | --add]
                 [key.sub=value ...]
    vdiff curate --report DIR

``DIR`` must be absent, empty, or an earlier output of ``vdiff curate`` (``DIR/.vdiff-curate.json``)
made from the same inputs; ``--overwrite``, ``--replace`` and ``--add`` say what to do otherwise.

``python -m pipelines.curate`` runs the same ``main``. See docs/curation.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_prep.captions import caption_preflight
from data_prep.engine import (
    CurateConfig,
    VideoTask,
    default_workers,
    finalize,
    prepare_out_dir,
    run_local,
)
from data_prep.inputs import InputItem, expand_inputs
from data_prep.report import render_html, summary_text
from data_prep.samples import sample_videos
from vdiff.config import describe, is_override, load_config, save_config
from vdiff.errors import EXPECTED_ERRORS, report_error
from vdiff.io.outdir import (
    OutDirError,
    check_out_dir,
    compare_inputs,
    describe_input,
    out_dir_lock,
    read_marker,
    write_marker,
)

COMMAND = "curate"


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
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out that is not a vdiff curate output (only vdiff's own "
        "file names there are replaced or removed; other files are kept)",
    )
    change = p.add_mutually_exclusive_group()
    change.add_argument(
        "--replace",
        action="store_true",
        help="--out holds the output of other inputs: make it the output of these inputs alone",
    )
    change.add_argument(
        "--add", action="store_true", help="--out holds the output of other inputs: add these inputs to them"
    )
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
    try:
        found = expand_inputs(args.inputs)
        if not args.samples:
            check_found(found, args.inputs)
        check_out_dir(args.out, command=COMMAND, overwrite=args.overwrite)
        with out_dir_lock(args.out, command=COMMAND):
            return run(args, cfg=cfg, workers=workers, started=started)
    except EXPECTED_ERRORS as e:  # NOTE: OutDirError is a ValueError (exit 2); disk full exits 1
        return report_error("vdiff curate", e, where=args.out)


def check_found(items: Sequence[InputItem], words: Sequence[str]) -> None:
    """Raise :class:`OutDirError` when the INPUT words name no video at all (nothing is touched)."""
    if any(not item.error for item in items):
        return
    reasons = "; ".join(item.error or "" for item in items[:3]) or "the folders hold no video files"
    raise OutDirError(
        f"found no input video in {' '.join(words)} ({reasons}); check the paths. "
        "Nothing was written: --out is left as it was"
    )


def resolve_inputs(
    args: argparse.Namespace, extra: Sequence[Path]
) -> tuple[list[InputItem], list[dict[str, Any]]]:
    """This run's inputs and their marker entries, checked against ``--out``'s marker.

    A different input set than the marker's is an error unless ``--replace`` (this set) or
    ``--add`` (the marker's inputs, then these).
    """
    items = expand_inputs(args.inputs, extra=extra)
    marker = read_marker(args.out, COMMAND)
    old = marker.get("inputs", []) if marker else []
    if args.add:
        items = expand_inputs([e["path"] for e in old] + list(args.inputs), extra=extra)
    changes, entries = compare_inputs(old, [describe_input(item.path) for item in items])
    if marker is not None and changes and not (args.replace or args.add):
        raise OutDirError(
            f"--out {args.out} holds the output of other inputs ({changes.summary()}); pass --replace "
            "to make it the output of these inputs alone, --add to add them to the earlier ones, "
            "or choose another --out"
        )
    return items, entries


def with_hashes(entries: list[dict[str, Any]], summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Marker entries with the content sha256 the workers computed (by input index)."""
    sha = {s["index"]: s["sha256"] for s in summaries if s.get("sha256")}
    return [{**e, "sha256": sha.get(i, e["sha256"])} for i, e in enumerate(entries)]


def run(args: argparse.Namespace, *, cfg: CurateConfig, workers: int, started: float) -> int:
    """The run proper, with ``--out``'s lock held: claim, process every video, finalize."""
    out: Path = args.out
    extra = sample_videos(out / "samples") if args.samples else []
    items, entries = resolve_inputs(args, extra)
    write_marker(out, COMMAND, inputs=entries, complete=False)
    prepare_out_dir(out)
    save_config(cfg, out / "config.yaml")
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
    write_marker(out, COMMAND, inputs=with_hashes(entries, summaries), complete=True)
    print(summary_text(report))
    print(f"  outputs: {out}/shards, {out}/manifest.parquet, {out}/report.json, {out}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
