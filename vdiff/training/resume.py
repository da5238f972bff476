"""Resuming a training run: which checkpoint to continue from, and the run folder a resume leaves.

``resume=auto`` continues from the newest checkpoint in ``RUN/checkpoints/`` that loads on every
rank, passing over damaged ones with a warning (:mod:`vdiff.checkpoint.check` says what is wrong);
``resume=PATH`` must load; ``resume=none`` starts over. Resuming from an older checkpoint than the
run's newest (or starting over in a run that has checkpoints) starts a branch: what the run wrote
after it is moved aside (``checkpoints/abandoned-<time>/``, ``samples/abandoned-<time>/``,
``metrics.abandoned-<time>.jsonl``), never mixed in or deleted.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint.api import CheckpointException

from vdiff.checkpoint import checkpoint_problem, load_problem, step_folders
from vdiff.config import ConfigError
from vdiff.io.files import atomic_write_text
from vdiff.parallel.distributed import any_rank
from vdiff.training.metrics import METRICS_FILE


def resume_checkpoint(
    resume: str, root: Path, *, load: Callable[[Path], dict[str, Any]], warn: bool
) -> tuple[dict[str, Any] | None, Path | None]:
    """(trainer state, folder) of the checkpoint ``resume`` names, loaded by ``load``; (None, None) for none.

    ``resume``: ``auto`` (the newest ``step_*`` folder under ``root`` that loads on every rank),
    ``none``, or a checkpoint folder. ``load(folder)`` loads the weights, optimizer and EMA in
    place and returns this rank's trainer state. Every rank calls this; ``warn`` prints a warning
    for each checkpoint passed over (on one rank).
    """
    candidates = [p for _, p in step_folders(root)] if resume == "auto" else []
    if resume not in ("auto", "none"):
        candidates = [Path(resume)]
    passed_over = []
    for ckpt in candidates:
        state, problem = None, checkpoint_problem(ckpt)
        if problem is None:
            try:
                state = load(ckpt)
            except (Exception, CheckpointException) as e:
                problem = load_problem(e)
        if not any_rank(problem is not None):  # NOTE: every rank resumes from the same checkpoint
            return state, ckpt
        reason = problem or "it does not load on another rank"
        if resume != "auto":
            raise ConfigError(f"resume={resume}: {reason}")
        passed_over.append(f"{ckpt.name}: {reason}")
        if warn:
            print(f"vdiff train: warning: resume=auto passes over {ckpt}: {reason}", file=sys.stderr)
    if passed_over:
        raise ConfigError(
            f"resume=auto: no checkpoint under {root} can be resumed ({'; '.join(passed_over)}); "
            "resume=PATH picks one, resume=none starts over (they are then moved aside, not deleted)"
        )
    return None, None


def prepare_run(run: Path, *, step: int, same_run: bool) -> str | None:
    """Make ``run`` hold only what training up to ``step`` wrote (call on one rank, before writing).

    ``same_run``: the run continues from one of its own checkpoints (else everything it holds is of
    another line of training). Returns the message of the branch started, None when none was.
    """
    run.mkdir(parents=True, exist_ok=True)
    branch = start_branch(run, step=step, same_run=same_run)
    if branch is None:
        cut_metrics(run / METRICS_FILE, step, aside=None)  # a killed run's rows after its checkpoint
    return branch


def free_name(parent: Path, stem: str, suffix: str = "") -> Path:
    """``parent/stem<suffix>``, or ``parent/stem-2<suffix>``, ... : the first that does not exist."""
    path, n = parent / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = parent / f"{stem}-{n}{suffix}"
    return path


def cut_metrics(path: Path, step: int, *, aside: Path | None) -> int:
    """Keep the metrics rows up to ``step``; the later ones (and a half-written last line) go to the file
    ``aside``, or are dropped when it is None (a killed run's rows, reproduced by the resume). Returns
    how many rows were cut."""
    if not path.is_file():
        return 0
    kept, cut = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row_step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            row_step = None  # NOTE: the last line of a killed run may be cut short
        (kept if isinstance(row_step, int) and row_step <= step else cut).append(line)
    if cut and aside is not None:
        atomic_write_text(aside, "".join(r + "\n" for r in cut))
    atomic_write_text(path, "".join(r + "\n" for r in kept))
    return len(cut)


def start_branch(run: Path, *, step: int, same_run: bool) -> str | None:
    """Set aside what ``run`` holds from after ``step`` (everything, when ``same_run`` is false): later
    checkpoints and validation videos move to ``abandoned-<time>/`` in their folders, later metrics rows
    to ``metrics.abandoned-<time>.jsonl``; nothing is deleted. Returns the message (None: nothing later)."""
    later = {
        name: [p for s, p in step_folders(run / name) if s > step or not same_run]
        for name in ("checkpoints", "samples")
    }
    metrics = run / METRICS_FILE
    if not later["checkpoints"] and (same_run or not (metrics.is_file() and metrics.stat().st_size)):
        return None  # NOTE: nothing of another line of training is here
    stamp = "abandoned-" + time.strftime("%Y%m%d-%H%M%S")
    ckpt_aside = free_name(run / "checkpoints", stamp)
    ckpt_aside.mkdir()
    for folder in later["checkpoints"]:
        folder.rename(ckpt_aside / folder.name)
    if (run / "config.yaml").is_file():
        shutil.copy2(run / "config.yaml", ckpt_aside / "config.yaml")  # NOTE: the abandoned run's config
    if later["samples"]:
        samples_aside = free_name(run / "samples", stamp)
        samples_aside.mkdir()
        for folder in later["samples"]:
            folder.rename(samples_aside / folder.name)
    rows_aside = free_name(run, ckpt_aside.name.replace("abandoned", "metrics.abandoned"), ".jsonl")
    rows = cut_metrics(metrics, step if same_run else 0, aside=rows_aside)
    names = ", ".join(p.name for p in reversed(later["checkpoints"])) or "none"
    moved_rows = f"; {rows} metrics rows moved to {rows_aside}" if rows else ""
    return (
        f"branching at step {step}: the run's later checkpoints ({names}) moved to {ckpt_aside}{moved_rows}"
    )
