"""One line and an exit code for every failure a command expects: 2 for the input, 1 for the environment."""

from __future__ import annotations

import errno
import json
import tarfile

import pytest

from vdiff.config import ConfigError
from vdiff.errors import error_line, is_user_error, report_error


def test_environment_failures_name_their_path_and_exit_1(capsys: pytest.CaptureFixture) -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/a/metrics.jsonl")
    assert report_error("vdiff x", full) == 1
    assert capsys.readouterr().err == "vdiff x: No space left on device: /runs/a/metrics.jsonl\n"
    denied = PermissionError(errno.EACCES, "Permission denied")  # raised without a file name
    assert report_error("vdiff x", denied, where="/runs/a") == 1
    assert capsys.readouterr().err == "vdiff x: Permission denied: under /runs/a\n"


def test_input_errors_exit_2_on_one_line() -> None:
    is_a_file = FileExistsError(errno.EEXIST, "File exists", "/out")
    bad_json = json.JSONDecodeError("Expecting value", "{\n,", 2)
    for error in (
        is_a_file,
        bad_json,
        tarfile.ReadError("bad tar"),
        ConfigError("a\nb"),
        FileNotFoundError("x"),
    ):
        assert is_user_error(error), error
    assert error_line(ConfigError("first\n  second\n")) == "first; second"
    assert error_line(is_a_file) == "File exists: /out"
