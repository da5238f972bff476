"""Output folders a command owns: a marker file, an exclusive lock, and the input set.

A command that writes into ``--out DIR`` (``vdiff curate``, ``vdiff cache``) uses a folder only
when it is absent, empty, or marked as its own output by ``DIR/.vdiff-<command>.json`` (the
marker: the command, the vdiff version, the inputs); any other folder needs ``--overwrite``,
and even then only the command's own file names are replaced or removed. While it runs it
holds ``fcntl.flock`` on ``DIR/.vdiff.lock`` (which holds its pid, host and start time), so a
second run on the same folder stops and says who holds it; the kernel releases the lock when
the holder dies, so a killed run never blocks the next one.

The input set is the list of input files with their size, mtime and (once known) content
sha256: :func:`input_changes` says what was added, removed or changed since the marker's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdiff import __version__
from vdiff.io.files import atomic_write_json, file_sha256

LOCK_NAME = ".vdiff.lock"
"""The lock file every vdiff command holds in its output folder while it runs."""

MARKER_PATTERN = re.compile(r"\.vdiff-([a-z]+)\.json")
"""File name of a marker; the group is the command (``curate``, ``cache``)."""


class OutDirError(ValueError):
    """``--out`` cannot be used as asked (the input's fault: exit 2); the message says why and what to do."""


def marker_path(out: Path, command: str) -> Path:
    """``DIR/.vdiff-<command>.json``: the file that marks ``out`` as ``vdiff <command>``'s output."""
    return out / f".vdiff-{command}.json"


def read_marker(out: Path, command: str) -> dict[str, Any] | None:
    """The marker of ``out`` for ``command``, or None when ``out`` has none."""
    path = marker_path(out, command)
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise OutDirError(
            f"{path} is unreadable ({e}); if {out} holds nothing you need, delete it or use another --out"
        ) from e
    if not isinstance(marker, dict):
        raise OutDirError(f"{path} is not a vdiff {command} marker; use another --out")
    return marker


def write_marker(out: Path, command: str, **fields: Any) -> None:
    """Write ``out``'s marker (atomically): the command, the vdiff version and ``fields``."""
    atomic_write_json(
        marker_path(out, command), {"command": f"vdiff {command}", "vdiff_version": __version__, **fields}
    )


def _other_command(out: Path, command: str) -> str | None:
    for p in out.iterdir():
        m = MARKER_PATTERN.fullmatch(p.name)
        if m and m.group(1) != command:
            return m.group(1)
    return None


def check_out_dir(out: Path, *, command: str, overwrite: bool) -> None:
    """Raise :class:`OutDirError` unless ``vdiff <command>`` may write into ``out``; touches nothing.

    Allowed: an absent or empty folder (an empty one may hold a stale lock file), the
    command's own earlier output (its marker), or, with ``overwrite``, any folder that is not
    another vdiff command's output.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise OutDirError(f"--out {out} is a file, not a folder; choose a folder")
    if marker_path(out, command).is_file():
        return
    other = _other_command(out, command)
    if other is not None:
        raise OutDirError(f"--out {out} holds the output of `vdiff {other}`; choose another --out")
    if overwrite or not [p for p in out.iterdir() if p.name != LOCK_NAME]:
        return
    raise OutDirError(
        f"--out {out} is not empty and is not an output of `vdiff {command}` (no "
        f"{marker_path(out, command).name}); choose a new or empty folder, or pass --overwrite to "
        f"write there (only vdiff {command}'s own file names are replaced, other files are kept)"
    )


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"{info['command']}, pid {info['pid']} on {info['host']}, started {info['started']}"
    return "holder unknown"


@contextlib.contextmanager
def out_dir_lock(out: Path, *, command: str) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` (created if absent) for the block; raise if another run holds it.

    The lock is ``flock`` on ``out/.vdiff.lock``, which then holds this run's pid, host, start
    time and command. Forked worker processes share it; the kernel releases it when the last
    of them exits, even after ``kill -9``. The file itself stays.
    """
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise OutDirError(
                f"--out {out} is in use by another run ({_holder(fd)}); wait for it to finish or "
                "choose another --out"
            ) from None
        me = {
            "command": f"vdiff {command}",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode("utf-8"), 0)
        yield
    finally:
        os.close(fd)


TEMP_NAME = re.compile(r"\.(.+)\.[A-Za-z0-9_]+\.tmp")
"""A temporary file of :func:`vdiff.io.files.atomic_open` (``mkstemp(prefix=".<name>.", suffix=".tmp")``)."""


def _is_one_of(name: str, names: str | Collection[str]) -> bool:
    return re.fullmatch(names, name) is not None if isinstance(names, str) else name in names


def remove_own_temps(folder: Path, names: str | Collection[str]) -> int:
    """Delete temporary files a killed run left in ``folder`` for our final ``names``; return how many.

    ``names`` is a regular expression or a collection of file names. Only
    :func:`vdiff.io.files.atomic_open`'s ``.<name>.<random>.tmp`` files of those names are
    removed; other hidden or ``.tmp`` files are not ours and stay.
    """
    names = names if isinstance(names, str) else set(names)
    n = 0
    for p in folder.iterdir() if folder.is_dir() else ():
        m = TEMP_NAME.fullmatch(p.name)
        if m and _is_one_of(m.group(1), names):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
    return n


# ----------------------------------------------------------------------------- input set


def describe_input(path: Path, *, sha256: str | None = None) -> dict[str, Any]:
    """``{"path", "size", "mtime_ns", "sha256"}`` of an input (size and mtime None when missing)."""
    path = path.resolve() if path.exists() else path.absolute()
    try:
        st = path.stat()
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size, mtime = None, None
    return {"path": str(path), "size": size, "mtime_ns": mtime, "sha256": sha256}


def _same_content(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether an input still holds what ``old`` recorded (hashing only when size or mtime moved)."""
    if (old.get("size"), old.get("mtime_ns")) == (new["size"], new["mtime_ns"]):
        return True
    if new["size"] is None or old.get("size") != new["size"] or not old.get("sha256"):
        return False
    try:
        return file_sha256(new["path"]) == old["sha256"]
    except OSError:
        return False


@dataclass
class InputChanges:
    """How an input set differs from an output's recorded one (paths)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    """same path, other content"""

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def summary(self, limit: int = 3) -> str:
        """``2 added (e.g. a.mp4, b.mp4), 1 removed (e.g. c.mp4)`` in words."""
        parts = []
        for what, paths in (("added", self.added), ("removed", self.removed), ("changed", self.changed)):
            if paths:
                parts.append(f"{len(paths)} {what} (e.g. {', '.join(paths[:limit])})")
        return ", ".join(parts) or "no change"


def compare_inputs(
    old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]
) -> tuple[InputChanges, list[dict[str, Any]]]:
    """What ``new`` (:func:`describe_input` entries) adds, removes and changes relative to ``old``.

    Also returns ``new`` with the recorded sha256 of every input whose content is unchanged.
    """
    before = {e["path"]: e for e in old}
    changes, entries = InputChanges(), []
    for e in new:
        o = before.get(e["path"])
        if o is None:
            changes.added.append(e["path"])
        elif _same_content(o, e):
            e = {**e, "sha256": e["sha256"] or o.get("sha256")}
        else:
            changes.changed.append(e["path"])
        entries.append(e)
    after = {e["path"] for e in new}
    changes.removed = [p for p in before if p not in after]
    return changes, entries
