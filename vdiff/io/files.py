"""Atomic file writes and content hashing.

Every file a pipeline produces is written under a temporary name in the same folder and
renamed into place when complete, so a crash or ``kill -9`` never leaves a partial file
under a final name.

Temporary files are created private (``tempfile.mkstemp`` makes them 0600), so every writer
here gives them the mode an ordinary ``open(path, "w")`` would have, ``0o666 & ~umask``, before
renaming them into place: outputs on a shared cluster are as readable as the user's umask says.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    # NOTE: os.umask can only be read by setting it, and it is process-global: a thread creating
    # a file between the two calls would get the temporary mask. /proc (Linux >= 4.7) avoids the
    # swap; elsewhere the swap is serialised and the temporary mask is the restrictive 0o077.
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", errors="replace") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask (``0o666 & ~umask``)."""
    return 0o666 & ~current_umask()


def _temp_next_to(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path`` (fd, name), with :func:`default_file_mode`, not 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temporary file next to ``path``; rename it onto ``path`` only on success.

    The file gets the mode a plain ``open`` would give it (``0o666 & ~umask``), not mkstemp's 0600.
    """
    path = Path(path)
    fd, tmp = _temp_next_to(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` for a library that writes by name; renamed onto ``path`` on success.

    The file is given ``0o666 & ~umask`` again after the writer is done, in case it recreated it.
    """
    path = Path(path)
    fd, tmp = _temp_next_to(path)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_stale_temps(folder: str | Path) -> int:
    """Delete ``.*.tmp`` files left in ``folder`` by a killed run; return how many."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
    return n


def safe_extract_path(root: str | Path, member: str) -> Path:
    """Resolve a tar/zip member name under ``root``; raise if it would escape ``root``."""
    root = Path(root).resolve()
    target = (root / member).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"archive member {member!r} would be written outside {root}; refusing it")
    return target
