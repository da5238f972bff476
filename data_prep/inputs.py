"""INPUT expansion for ``vdiff curate``: video files, folders, and text files listing paths.

Every input word becomes zero or more :class:`InputItem` rows, in a deterministic order
(folders are walked recursively and sorted). Paths that do not exist are kept as items with
an error reason, so they show up in ``report.json`` instead of stopping the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg"}
    | {".ts", ".mts", ".m2ts", ".flv", ".wmv", ".3gp"}
)
"""Extensions a folder search picks up (case-insensitive)."""

LIST_EXTENSIONS: frozenset[str] = frozenset({".txt", ".lst", ".list"})
"""An INPUT file with one of these extensions is a list of paths, one a line."""


@dataclass(frozen=True)
class InputItem:
    """One video to process, or a path that could not be used (``error`` says why)."""

    path: Path
    error: str | None = None


def is_video_name(path: Path) -> bool:
    """True when ``path`` has a video extension."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _walk(folder: Path) -> list[Path]:
    # NOTE: hidden files and folders (.git, our own .tmp files) are skipped; order is sorted
    # so that two runs over the same folder see the same input order.
    found = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and is_video_name(p):
            found.append(p)
    return sorted(found)


def _read_list(list_file: Path) -> list[str]:
    lines = []
    for raw in list_file.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def _expand_one(word: str | Path, *, base: Path | None, depth: int) -> list[InputItem]:
    path = Path(word).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if path.is_dir():
        return [InputItem(p) for p in _walk(path)]
    if not path.exists():
        return [InputItem(path, f"no such file or folder: {path}")]
    if path.suffix.lower() in LIST_EXTENSIONS:
        if depth > 4:
            return [InputItem(path, f"list file {path} nests other list files too deeply")]
        items: list[InputItem] = []
        for entry in _read_list(path):
            # NOTE: relative entries are relative to the list file's folder, so a list and its
            # videos can be moved together.
            items.extend(_expand_one(entry, base=path.parent, depth=depth + 1))
        return items
    # NOTE: any other file named explicitly is treated as a video; a file that is not one
    # becomes an error row when it fails to decode, not a silent skip.
    return [InputItem(path)]


def expand_inputs(words: Sequence[str | Path], *, extra: Iterable[Path] = ()) -> list[InputItem]:
    """Expand INPUT words (files, folders, list files) into items; duplicates are dropped.

    ``extra`` paths (e.g. bundled samples) are appended after the words.
    """
    items: list[InputItem] = []
    for word in words:
        items.extend(_expand_one(word, base=None, depth=0))
    items.extend(InputItem(Path(p)) for p in extra)
    seen: set[Path] = set()
    unique = []
    for item in items:
        key = item.path.resolve() if item.path.exists() else item.path
        if key in seen:
            continue
        seen.add(key)
        unique.append(item)
    return unique
