"""What is wrong with a checkpoint folder: judged by its files before a load, or by a load that failed.

A run's ``checkpoints/`` may hold folders a killed or failing run left behind: no ``.metadata``
or an empty one, no tensor files, a missing or unreadable ``trainer/rank-00000.json``. Each
function here says so in a line a user can act on, so a resume can pass such a folder over.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from torch.distributed.checkpoint.api import CheckpointException

STEP_FOLDER = re.compile(r"^step_(\d{8,})$")
"""a checkpoint folder's name; the group is the step"""


def step_folders(root: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of each ``step_{step:08d}`` folder in ``root`` (complete or not), newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_FOLDER.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from, judged by its files; None when they are all there."""
    if not ckpt.is_dir():
        return "no such folder" if not ckpt.exists() else "not a folder"
    metadata = ckpt / ".metadata"
    if not metadata.is_file() or metadata.stat().st_size == 0:
        return "no .metadata, or an empty one (its writing did not finish)"
    if not any(ckpt.glob("*.distcp")):
        return "no tensor files (*.distcp)"
    trainer = ckpt / "trainer" / "rank-00000.json"
    try:
        state = json.loads(trainer.read_text())
    except FileNotFoundError:
        return "no trainer/rank-00000.json (step, data position, RNG)"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"trainer/rank-00000.json is unreadable ({type(e).__name__}: {e})"
    m = STEP_FOLDER.match(ckpt.name)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return "trainer/rank-00000.json holds no step"
    if m and int(m.group(1)) != state["step"]:
        return f"trainer/rank-00000.json says step {state['step']}, the folder's name another"
    return None


def checkpoint_cause(error: CheckpointException) -> BaseException:
    """A rank's own exception inside DCP's CheckpointException (e.g. the OSError of a full disk)."""
    return next(iter(error.failures.values()))[0] if error.failures else error


def load_problem(error: BaseException) -> str:
    """The first line of a failed checkpoint load, as the reason to pass the checkpoint over."""
    if isinstance(error, CheckpointException):
        error = checkpoint_cause(error)
    first = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), type(error).__name__)
    return f"it does not load ({type(error).__name__}: {first[:1000]})"
