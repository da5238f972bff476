"""`vdiff curate` end to end: CLI, config errors before work, kill -9 and resume."""

from __future__ import annotations

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
