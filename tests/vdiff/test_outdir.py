"""Output folders: ownership marker, exclusive lock (stale locks do not block), input-set changes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vdiff.io.outdir import (
    LOCK_NAME,
    OutDirError,
    check_out_dir,
    compare_inputs,
    describe_input,
    out_dir_lock,
    read_marker,
    remove_own_temps,
    write_marker,
)

HOLD = """
import sys
from pathlib import Path
from vdiff.io.outdir import out_dir_lock
with out_dir_lock(Path(sys.argv[1]), command="curate"):
    print("locked", flush=True)
    sys.stdin.read()  # hold until killed or stdin closes
"""


def test_absent_empty_own_and_overwritten_folders_are_accepted(tmp_path: Path) -> None:
    check_out_dir(tmp_path / "new", command="curate", overwrite=False)
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty", command="curate", overwrite=False)
    (tmp_path / "empty" / LOCK_NAME).write_text("")  # left by a run killed before it wrote anything
    check_out_dir(tmp_path / "empty", command="curate", overwrite=False)
    write_marker(tmp_path / "own", "curate", inputs=[])
    (tmp_path / "own" / "report.json").write_text("{}")
    check_out_dir(tmp_path / "own", command="curate", overwrite=False)
    assert read_marker(tmp_path / "own", "curate")["command"] == "vdiff curate"
    assert not (tmp_path / "new").exists()


def test_a_folder_vdiff_did_not_write_is_refused_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("mine")
    with pytest.raises(OutDirError, match=r"not empty and is not an output of `vdiff curate`.*--overwrite"):
        check_out_dir(tmp_path, command="curate", overwrite=False)
    check_out_dir(tmp_path, command="curate", overwrite=True)
    write_marker(tmp_path, "cache", inputs=[])
    with pytest.raises(OutDirError, match="holds the output of `vdiff cache`"):
        check_out_dir(tmp_path, command="curate", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".vdiff-cache.json", "config.yaml"]


def _holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


def test_a_second_run_is_refused_and_told_who_holds_the_lock(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        busy = rf"in use by another run \(vdiff curate, pid {proc.pid} on"
        with pytest.raises(OutDirError, match=busy), out_dir_lock(tmp_path, command="curate"):
            pass
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_killed_run_does_not_block_the_next(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_NAME).is_file()  # the file stays; the kernel released the lock
    with out_dir_lock(tmp_path, command="curate"):
        assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_NAME).read_text()


def test_only_our_temporary_files_are_removed(tmp_path: Path) -> None:
    names = [".report.json.ab_12.tmp", ".shard-000001.tar.x9.tmp", ".notes.tmp", ".mine.tar.k1.tmp", "a.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert remove_own_temps(tmp_path, r"report\.json|shard-\d{6}\.tar") == 2
    assert remove_own_temps(tmp_path, ["mine.tar"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "a.tmp"]


def test_input_changes_name_added_removed_and_changed_files(tmp_path: Path) -> None:
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (tmp_path / name).write_bytes(name.encode())
    old = [describe_input(tmp_path / n, sha256=None) for n in ("a.mp4", "b.mp4")]
    changes, _ = compare_inputs(old, [describe_input(tmp_path / n) for n in ("a.mp4", "b.mp4")])
    assert not changes and changes.summary() == "no change"
    (tmp_path / "b.mp4").write_bytes(b"other content")
    changes, _ = compare_inputs(old, [describe_input(tmp_path / n) for n in ("b.mp4", "c.mp4")])
    a, b, c = (str(tmp_path / n) for n in ("a.mp4", "b.mp4", "c.mp4"))
    assert (changes.added, changes.removed, changes.changed) == ([c], [a], [b])
    assert "1 added" in changes.summary() and "1 changed" in changes.summary()


def test_a_touched_input_with_the_same_content_is_unchanged(tmp_path: Path) -> None:
    from vdiff.io.files import file_sha256

    path = tmp_path / "a.mp4"
    path.write_bytes(b"frames")
    old = [describe_input(path, sha256=file_sha256(path))]
    os.utime(path, ns=(1, 1))
    changes, entries = compare_inputs(old, [describe_input(path)])
    assert not changes and entries[0]["sha256"] == old[0]["sha256"]
    path.write_bytes(b"framez")
    os.utime(path, ns=(1, 1))
    assert compare_inputs(old, [describe_input(path)])[0].changed == [str(path)]
