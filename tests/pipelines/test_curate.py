"""`vdiff curate` end to end: CLI, config errors before work, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from data_prep.engine import CurateConfig
from data_prep.manifest import read_manifest
from data_prep.shards import read_shard
from pipelines import cli, curate
from vdiff.config import load_config, to_dict
from vdiff.io.files import file_sha256
from vdiff.io.outdir import LOCK_NAME, out_dir_lock

REPO = Path(__file__).resolve().parents[2]


def outputs(out: Path) -> tuple[list[dict], dict[str, list[tuple[str, bytes]]]]:
    shards = {p.name: read_shard(p) for p in sorted((out / "shards").glob("*.tar"))}
    return read_manifest(out / "manifest.parquet"), shards


def test_help_lists_every_config_key(capsys):
    with pytest.raises(SystemExit) as e:
        curate.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for key in ("decode.short_side", "motion.min_motion", "caption.method", "output.samples_per_shard"):
        assert key in text


def test_configs_curate_yaml_holds_the_dataclass_defaults():
    assert load_config(CurateConfig, REPO / "configs" / "curate.yaml") == CurateConfig()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("motion.min_motoin=0.1", "did you mean motion.min_motion"),
        ("output.samples_per_shard=many", "expected an integer"),
        ("caption.method=vlm", "caption.model_path=DIR"),
        ("caption.method=vlm caption.model_path=/nonexistent/qwen", "no config.json"),
    ],
)
def test_config_errors_stop_the_run_before_any_work(tiny_videos, tmp_path, capsys, override, message):
    out = tmp_path / "out"
    assert curate.main([str(tiny_videos), "--out", str(out), *override.split()]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_vdiff_curate_writes_every_output_and_the_resolved_config(
    tiny_videos, tmp_path, small_overrides, capsys
):
    out = tmp_path / "out"
    args = [str(tiny_videos), "--out", str(out), "--workers", "2", "--no-progress", *small_overrides]
    assert cli.main(["curate", *args, "output.samples_per_shard=3", "output.min_shards=1"]) == 0
    summary = capsys.readouterr().out
    assert "4 kept in 2 shard(s)" in summary and "too_static" in summary
    for name in ("manifest.parquet", "report.json", "report.html", "config.yaml"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["output"]["samples_per_shard"] == 3 and saved["quality"]["min_width"] == 64
    packing = ["output.samples_per_shard=3", "output.min_shards=1"]
    resolved = load_config(CurateConfig, overrides=[*small_overrides, *packing])
    assert saved == to_dict(resolved)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.curate", *args]


def test_kill_9_mid_run_then_the_same_command_equals_an_uninterrupted_run(
    tiny_videos, tmp_path, small_overrides
):
    reference = tmp_path / "reference"
    assert curate.main([str(tiny_videos), "--out", str(reference), "--no-progress", *small_overrides]) == 0

    out = tmp_path / "killed"
    command = _cli(str(tiny_videos), "--out", str(out), "--workers", "1", "--no-progress", *small_overrides)
    proc = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((out / "work").glob("*.tar")):
        assert proc.poll() is None, "the run ended before its first video was committed"
        assert time.monotonic() < deadline, "no work file appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists(), "the run ended before the kill: the test proved nothing"
    done = len(list((out / "work").glob("*.tar")))
    assert 1 <= done < 5

    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{done} reused from work/" in result.stdout
    assert outputs(out) == outputs(reference)
    assert not [p for p in out.rglob("*.tmp")]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but the lock file) and its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def sources(out: Path) -> set[str]:
    return {Path(r["source"]).name for r in read_manifest(out / "manifest.parquet")}


def test_a_folder_curate_did_not_write_is_refused_and_overwrite_keeps_other_files(
    tiny_videos, tmp_path, small_overrides, capsys
):
    out = tmp_path / "mine"
    theirs = {"config.yaml": b"mine", "report.json": b"mine", "shards/shard-000000.tar": b"mine"}
    others = {"shards/keep.tar": b"mine", "shards/.partial.tmp": b"mine", "notes.tmp": b"mine"}
    for name, data in {**theirs, **others}.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    args = [str(tiny_videos / "blue_square_up.mp4"), "--out", str(out), "--no-progress", *small_overrides]
    assert curate.main(args) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert snapshot(out) == {**theirs, **others}

    assert curate.main([*args, "--overwrite"]) == 0
    after = snapshot(out)
    assert {k: after[k] for k in others} == others  # not vdiff's names: kept as they were
    assert after["shards/shard-000000.tar"] != b"mine" and sources(out) == {"blue_square_up.mp4"}


def test_a_mistyped_input_on_a_finished_dataset_is_an_error_that_touches_nothing(
    tiny_videos, tmp_path, small_overrides, capsys
):
    out = tmp_path / "out"
    common = ["--out", str(out), "--no-progress", *small_overrides]
    assert curate.main([str(tiny_videos / "blue_square_up.mp4"), *common]) == 0
    before = snapshot(out)
    (tmp_path / "empty").mkdir()
    for missing in (tiny_videos / "blue_square_upp.mp4", tmp_path / "empty"):
        assert curate.main([str(missing), *common]) == 2
        assert "found no input video" in capsys.readouterr().err
        assert snapshot(out) == before


def test_other_inputs_are_refused_unless_replace_or_add(tiny_videos, tmp_path, small_overrides, capsys):
    out = tmp_path / "out"
    common = ["--out", str(out), "--no-progress", *small_overrides]
    blue, red = str(tiny_videos / "blue_square_up.mp4"), str(tiny_videos / "red_circle_left.mp4")
    assert curate.main([blue, *common]) == 0
    before = snapshot(out)
    assert curate.main([red, *common]) == 2
    err = capsys.readouterr().err
    assert "other inputs (1 added" in err and "--replace" in err and "--add" in err
    assert snapshot(out) == before

    assert curate.main([red, *common, "--add"]) == 0
    assert sources(out) == {"blue_square_up.mp4", "red_circle_left.mp4"}
    assert curate.main([blue, *common]) == 2  # the output now holds both
    assert curate.main([blue, *common, "--replace"]) == 0
    assert sources(out) == {"blue_square_up.mp4"}
    assert len(list((out / "shards").glob("*.tar"))) == 1
    marker = json.loads((out / ".vdiff-curate.json").read_text())
    assert marker["complete"] and [Path(e["path"]).name for e in marker["inputs"]] == ["blue_square_up.mp4"]
    assert marker["inputs"][0]["sha256"] == file_sha256(blue)


def test_a_second_run_on_the_same_out_is_refused_while_the_first_holds_it(
    tiny_videos, tmp_path, small_overrides, capsys
):
    out = tmp_path / "out"
    args = [str(tiny_videos / "blue_square_up.mp4"), "--out", str(out), "--no-progress", *small_overrides]
    with out_dir_lock(out, command="curate"):  # NOTE: flock: a second open file conflicts, even in-process
        assert curate.main(args) == 2
    assert f"in use by another run (vdiff curate, pid {os.getpid()} on" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    assert curate.main(args) == 0


def test_out_under_a_file_is_one_line_and_exit_2(tiny_videos, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert curate.main([str(tiny_videos), "--out", str(blocker / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vdiff curate:") and "a_file" in err


def test_disk_full_during_the_run_is_one_line_naming_the_folder_and_exit_1(
    tiny_videos, tmp_path, small_overrides, capsys, monkeypatch
):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(curate, "finalize", full)
    out = tmp_path / "out"
    code = curate.main([str(tiny_videos), "--out", str(out), "--no-progress", *small_overrides])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "No space left on device" in err and str(out) in err


def test_an_input_file_named_like_an_override_is_an_input(
    tiny_videos, tmp_path, small_overrides, monkeypatch
):
    import shutil

    video = sorted(tiny_videos.glob("*.mp4"))[0]
    shutil.copy(video, tmp_path / "take=2.mp4")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert curate.main(["take=2.mp4", "--out", str(out), "--no-progress", *small_overrides]) == 0
    report = yaml.safe_load((out / "report.json").read_text())
    assert [Path(e["path"]).name for e in report["inputs"]] == ["take=2.mp4"]
