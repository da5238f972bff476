"""The local engine: per-video jobs in isolated workers, resume, bad inputs, finalize."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_prep import engine
from data_prep import synthetic as S
from data_prep.engine import (
    CurateConfig,
    VideoTask,
    clip_id_for,
    finalize,
    prepare_out_dir,
    run_isolated,
    run_local,
    work_config_hash,
)
from data_prep.inputs import expand_inputs
from data_prep.manifest import read_manifest
from data_prep.samples import write_synthetic_samples
from data_prep.shards import read_shard
from vdiff.config import load_config
from vdiff.io.files import file_sha256

SMALL = ["quality.min_width=64", "quality.min_height=48"]


def tiny_config(*overrides: str) -> CurateConfig:
    return load_config(CurateConfig, overrides=[*SMALL, *overrides])


def curate(inputs: list, out: Path, cfg: CurateConfig) -> dict:
    """What `vdiff curate` does, minus the CLI."""
    prepare_out_dir(out)
    items = expand_inputs(inputs)
    tasks = [VideoTask(index=i, path=it.path, work_dir=out / "work", cfg=cfg) for i, it in enumerate(items)]
    summaries = run_local([t for t, it in zip(tasks, items) if not it.error], workers=2, progress=False)
    return finalize(items, summaries, cfg=cfg, out_dir=out)


def outputs(out: Path) -> tuple[list[dict], dict[str, list[tuple[str, bytes]]]]:
    shards = {p.name: read_shard(p) for p in sorted((out / "shards").glob("*.tar"))}
    return read_manifest(out / "manifest.parquet"), shards


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    write_synthetic_samples(folder / "good", size=(72, 128))
    bad = folder / "bad"
    bad.mkdir()
    good = (folder / "good" / "blue_square_up.mp4").read_bytes()
    (bad / "truncated_header.mp4").write_bytes(good[: len(good) // 10])
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "text.mkv").write_text("this is not a video\n" * 50)
    return folder


@pytest.fixture(scope="module")
def first_run(inputs, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    report = curate([inputs / "good", inputs / "bad", inputs / "missing.mp4"], out, tiny_config())
    return out, report


def test_every_filter_reason_and_the_kept_clips_end_up_in_manifest_and_shards(first_run):
    out, report = first_run
    rows, shards = outputs(out)
    by_name = {}
    for r in rows:
        by_name.setdefault(Path(r["source"]).name, []).append(r["status"])
    assert by_name == {
        "blue_square_up.mp4": ["kept"],
        "filters.mp4": ["kept", "too_static", "too_fast", "dark", "too_short", "blurry"],
        "red_circle_left.mp4": ["kept"],
        # the same frames at another quality: a near duplicate of red_circle_left
        "red_circle_left_reencoded.mp4": ["duplicate"],
        "yellow_triangle_right.mp4": ["kept"],
    }
    dup = next(r for r in rows if r["status"] == "duplicate")
    original = next(r for r in rows if r["source"].endswith("red_circle_left.mp4"))
    assert dup["duplicate_of"] == original["clip_id"]
    expected = {"kept": 4, "duplicate": 1, "too_static": 1, "too_fast": 1, "dark": 1, "too_short": 1}
    expected["blurry"] = 1
    assert report["counts"] == dict(sorted(expected.items()))
    kept = sorted(r["clip_id"] for r in rows if r["status"] == "kept")
    caption = {r["clip_id"]: r["caption"] for r in rows}
    # output.min_shards=8 spreads the 4 kept clips over 4 shards, in sorted clip_id order.
    assert list(shards) == [f"shard-{n:06d}.tar" for n in range(4)]
    members = [m for shard in shards.values() for m in shard]
    exts = {c: ("mp4", "txt", "json") if caption[c] else ("mp4", "json") for c in kept}
    assert [m for m, _ in members] == [f"{c}.{ext}" for c in kept for ext in exts[c]]
    assert all(dict(members)[f"{c}.txt"] == caption[c].encode() for c in kept if caption[c])
    for r in rows:
        assert (r["shard"] is not None) == (r["status"] == "kept")
        assert r["clip_id"] == clip_id_for(r["source_sha256"], r["start_frame"], r["end_frame"])
    meta = json.loads(dict(members)[f"{kept[0]}.json"])
    row = next(r for r in rows if r["clip_id"] == kept[0])
    assert meta["caption"] == row["caption"] and meta["start_frame"] == row["start_frame"]
    assert row["caption"] == Path(row["source"]).with_suffix(".txt").read_text().strip()


def test_bad_inputs_are_error_rows_with_a_reason_and_do_not_stop_the_others(first_run, inputs):
    _, report = first_run
    status = {Path(e["path"]).name: (e["status"], e["reason"]) for e in report["inputs"]}
    for name in ("truncated_header.mp4", "empty.mp4", "text.mkv", "missing.mp4"):
        assert status[name][0] == "error", name
        assert name in status[name][1]
    assert "empty" in status["empty.mp4"][1]
    assert "no such file" in status["missing.mp4"][1]
    assert report["errors"] == 4
    assert sum(e["kept"] for e in report["inputs"]) == report["kept"] == 4
    assert set(report["stage_seconds"]) == set(engine.STAGES)


def test_a_second_run_reuses_every_video_and_reproduces_the_outputs(first_run, inputs):
    out, _ = first_run
    before = outputs(out)
    report = curate([inputs / "good", inputs / "bad", inputs / "missing.mp4"], out, tiny_config())
    assert report["videos_reused"] == 8  # 5 good videos and 3 committed decode errors; missing is not a task
    assert outputs(out) == before


def test_changing_a_per_video_key_does_not_reuse_stale_work(first_run, inputs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    cfg = tiny_config("motion.min_motion=0.5")
    assert work_config_hash(cfg) != work_config_hash(tiny_config())
    # Dedup, caption and packing keys do not change the per-video work.
    packing = ["output.samples_per_shard=1", "output.min_shards=3", "dedup.hamming_threshold=3"]
    assert work_config_hash(tiny_config(*packing)) == work_config_hash(tiny_config())
    report = curate([inputs / "good"], out, cfg)
    assert report["videos_reused"] == 0
    rows, _ = outputs(out)
    # With min_motion=0.5 (frame diagonals per second) no slow shape or pan is kept any more.
    assert "too_static" in {r["status"] for r in rows}
    assert all(r["motion"] >= 0.5 for r in rows if r["status"] == "kept")


def _crash_on(target: str, real):
    def analyze(path, **kwargs):
        if Path(path).name == target:
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(path, **kwargs)

    return analyze


def test_a_worker_that_segfaults_becomes_an_error_row(inputs, tmp_path, monkeypatch):
    # NOTE: workers are forked, so the patched decoder is what they run.
    crashing = _crash_on("blue_square_up.mp4", engine.analyze_video)
    monkeypatch.setattr(engine, "analyze_video", crashing)
    report = curate([inputs / "good"], tmp_path / "out", tiny_config())
    status = {Path(e["path"]).name: e for e in report["inputs"]}
    assert status["blue_square_up.mp4"]["status"] == "error"
    assert "SIGSEGV" in status["blue_square_up.mp4"]["reason"]
    assert all(e["status"] == "ok" for n, e in status.items() if n != "blue_square_up.mp4")
    assert report["kept"] == 3
    # A crash is not committed as a result: once the cause is gone, the next run processes it.
    monkeypatch.undo()
    report = curate([inputs / "good"], tmp_path / "out", tiny_config())
    assert report["kept"] == 4 and report["videos_reused"] == 4


def test_run_isolated_survives_crashes_and_keeps_going():
    def job(x: int) -> dict:
        if x == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return {"x": x}

    results = run_isolated(job, [1, 2, 3, 4], workers=2, on_crash=lambda x, code: {"x": x, "code": code})
    expected = [{"x": 1}, {"x": 2, "code": -signal.SIGKILL}, {"x": 3}, {"x": 4}]
    assert sorted(results, key=lambda r: r["x"]) == expected


def _copies(
    folder: Path, name: str, best: np.ndarray, worse: np.ndarray, *, worse_crfs: range
) -> dict[str, Path]:
    """Write a better and a worse copy of a video, with crfs picked so the worse one's clip ids sort first."""
    for best_crf, worse_crf in itertools.product(range(16, 20), worse_crfs):
        paths = {
            "best": S.write_video(folder / f"{name}_best.mp4", best, 24.0, crf=best_crf),
            "worse": S.write_video(folder / f"{name}_worse.mp4", worse, 24.0, crf=worse_crf),
        }
        if file_sha256(paths["worse"]) < file_sha256(paths["best"]):
            return paths
    raise AssertionError(f"no crf pair makes the worse copy of {name} sort first")


def test_dedup_keeps_the_highest_resolution_then_bitrate_copy_whatever_the_clip_ids(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    kw = {"num_frames": 48, "fps": 24.0, "speed": 0.3}
    big = S.moving_shapes("red", "circle", "left", height=144, width=256, seed=1, **kw)
    small = np.stack([cv2.resize(f, (128, 72), interpolation=cv2.INTER_AREA) for f in big])  # (T, 72, 128, 3)
    other = S.moving_shapes("blue", "square", "up", height=72, width=128, seed=2, **kw)
    # 256x144 vs 128x72 (any crf); 128x72 both, crf 16-19 vs 26-33
    pairs = {
        "resolution": _copies(folder, "resolution", big, small, worse_crfs=range(16, 24)),
        "bitrate": _copies(folder, "bitrate", other, other, worse_crfs=range(26, 34)),
    }
    curate([folder], tmp_path / "out", tiny_config())
    rows, _ = outputs(tmp_path / "out")
    by_path = {Path(r["source"]): r for r in rows}
    assert len(by_path) == len(rows) == 4  # one clip per video
    for what, paths in pairs.items():
        best, worse = by_path[paths["best"]], by_path[paths["worse"]]
        assert worse["clip_id"] < best["clip_id"]  # the old clip-id order would have kept the worse copy
        assert (best["status"], best["duplicate_of"]) == ("kept", None), what
        assert (worse["status"], worse["duplicate_of"]) == ("duplicate", best["clip_id"]), what


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=oct)
def test_curate_outputs_honour_the_umask(inputs, tmp_path, umask):
    old = os.umask(umask)
    try:
        curate([inputs / "good" / "blue_square_up.mp4"], tmp_path / "out", tiny_config())
    finally:
        os.umask(old)
    out = tmp_path / "out"
    shards, work = sorted(out.glob("shards/*.tar")), sorted(out.glob("work/*.tar"))
    assert shards and work
    written = [out / "manifest.parquet", out / "report.json", *shards, *work]
    for p in written:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p
    for p in (out, out / "shards", out / "work"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o777 & ~umask, p
