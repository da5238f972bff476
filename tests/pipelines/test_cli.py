"""The `vdiff` dispatcher: an error a subcommand leaves unreported still ends as one line and an exit code."""

from __future__ import annotations

import errno
import tarfile

import pytest

import pipelines.evaluate
from pipelines.cli import main as vdiff


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/out/x.json"),
            1,
            "No space left on device: /out/x.json",
        ),
        (
            NotADirectoryError(errno.ENOTDIR, "Not a directory", "/out/file/x"),
            2,
            "Not a directory: /out/file/x",
        ),
        (tarfile.ReadError("/d/a.tar: bad tar\nmore"), 2, "/d/a.tar: bad tar; more"),
    ],
)
def test_unreported_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, error: Exception, code: int, line: str
) -> None:
    def fails(argv: list[str]) -> int:
        raise error

    monkeypatch.setattr(pipelines.evaluate, "main", fails)
    assert vdiff(["eval", "x"]) == code
    assert capsys.readouterr().err == f"vdiff eval: {line}\n"
