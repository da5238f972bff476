"""How a command reports a failure it expected: one line on stderr, and an exit code.

Exit 2: the user's input is wrong (a config value, a missing or wrong-kind path, a bad tar or
JSON); the line says what and where. Exit 1: the environment failed (disk full, permission,
I/O error); the line names the path. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
import tarfile
from pathlib import Path

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, tarfile.TarError)
"""what a pipeline's ``main`` turns into one line (ConfigError is a ValueError)"""

_USER_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}


def is_user_error(error: BaseException) -> bool:
    """True when ``error`` is the input's fault (exit 2), False for the environment's (exit 1)."""
    if isinstance(error, FileNotFoundError | NotADirectoryError | IsADirectoryError | FileExistsError):
        return True
    if isinstance(error, OSError):
        return error.errno in _USER_ERRNOS
    return isinstance(error, ValueError | tarfile.TarError)


def error_line(error: BaseException, *, where: str | Path | None = None) -> str:
    """``error`` as one line; an OSError names its path (``where`` when the error has none)."""
    if isinstance(error, OSError) and error.strerror:
        paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
        if not paths and where is not None:
            paths = [f"under {where}"]
        text = f"{error.strerror}: {' -> '.join(paths)}" if paths else error.strerror
    else:
        text = str(error) or type(error).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def report_error(prog: str, error: BaseException, *, where: str | Path | None = None) -> int:
    """Print ``prog: <one line>`` to stderr; return the exit code (2 user error, 1 environment)."""
    print(f"{prog}: {error_line(error, where=where)}", file=sys.stderr, flush=True)
    return 2 if is_user_error(error) else 1
