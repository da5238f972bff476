"""The Ray engine: the same per-video job as the local engine, mapped with Ray Data.

``ray.data.from_items`` holds one row per video (index and path); ``map`` runs
:func:`data_prep.engine.process_video` on it, inside a forked child as in the local engine so
that a decoder crash stays an error row. Work files, finalize step and outputs are the local
engine's, so both engines produce the same files. On a cluster, ``DIR`` must be on a shared
filesystem; locally ``ray.init(num_cpus=workers)`` starts a private Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_prep.engine import CurateConfig, VideoTask, crash_summary, process_video, run_isolated, warm_imports

SUMMARY_KEYS = ("index", "path", "sha256", "work", "error", "reused")


class _VideoMapper:
    """The Ray Data ``map`` function: one input row -> one per-video summary row."""

    def __init__(self, work_dir: Path, cfg: CurateConfig):
        self.work_dir = work_dir
        self.cfg = cfg

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        warm_imports()
        path = Path(row["path"])
        task = VideoTask(index=int(row["index"]), path=path, work_dir=self.work_dir, cfg=self.cfg)
        (summary,) = run_isolated(process_video, [task], workers=1, on_crash=crash_summary)
        # NOTE: Ray Data rows become Arrow columns: keep one type per column (strings or null).
        return {k: summary[k] for k in SUMMARY_KEYS}


def run_ray(tasks: Sequence[VideoTask], *, workers: int, address: str | None = None) -> list[dict[str, Any]]:
    """Process every task with Ray Data on ``workers`` CPUs; summaries in task order.

    Starts a local Ray (``num_cpus=workers``) unless one is running or ``address`` is given,
    and shuts down only a Ray it started.
    """
    import ray

    if not tasks:
        return []
    work_dirs = {t.work_dir for t in tasks}
    cfgs = {id(t.cfg) for t in tasks}
    if len(work_dirs) != 1 or len(cfgs) != 1:
        raise ValueError("run_ray: all tasks must share one work folder and one config")
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = True
        items = [{"index": t.index, "path": str(t.path)} for t in tasks]
        # NOTE: one block per video so that Ray schedules videos, not batches of them.
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map(_VideoMapper(next(iter(work_dirs)), tasks[0].cfg), num_cpus=1)
        rows = ds.take_all()
    finally:
        if started:
            ray.shutdown()
    return sorted((dict(r) for r in rows), key=lambda s: s["index"])
