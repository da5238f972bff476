"""The Ray Data engine produces exactly the local engine's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep import synthetic
from data_prep.engine import CurateConfig, VideoTask, finalize, prepare_out_dir, run_local
from data_prep.inputs import expand_inputs
from data_prep.manifest import read_manifest
from data_prep.ray_engine import SUMMARY_KEYS, _VideoMapper
from pipelines import curate
from vdiff.config import load_config

SMALL = ["quality.min_width=64", "quality.min_height=48"]


def outputs(out: Path) -> tuple[list[dict], dict[str, bytes]]:
    shards = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    return read_manifest(out / "manifest.parquet"), shards


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray_in")
    synthetic.write_video(folder / "moving.mp4", synthetic.moving_shapes(num_frames=36), 24.0)
    synthetic.write_video(folder / "pan.mp4", synthetic.pan(num_frames=36, seed=3), 24.0)
    synthetic.write_video(folder / "still.mp4", synthetic.static_shot(num_frames=36), 24.0)
    (folder / "broken.mp4").write_bytes(b"\x00" * 1000)
    return folder


def test_the_ray_map_function_gives_the_local_engines_summaries_and_outputs(videos, tmp_path):
    # NOTE: the map function alone, without starting Ray (that takes ~20-40 s on 2 cores; the
    # slow test below runs it through a real local Ray).
    cfg = load_config(CurateConfig, overrides=SMALL)
    items = expand_inputs([videos])
    results = {}

    def mapped(tasks: list[VideoTask]) -> list[dict]:
        mapper = _VideoMapper(tasks[0].work_dir, cfg)
        return [mapper({"index": t.index, "path": str(t.path)}) for t in tasks]

    def local(tasks: list[VideoTask]) -> list[dict]:
        return run_local(tasks, workers=2, progress=False)

    for name, runner in [("local", local), ("mapper", mapped)]:
        out = tmp_path / name
        prepare_out_dir(out)
        work = out / "work"
        tasks = [VideoTask(index=i, path=it.path, work_dir=work, cfg=cfg) for i, it in enumerate(items)]
        summaries = runner(tasks)
        assert all(set(s) >= set(SUMMARY_KEYS) for s in summaries)
        finalize(items, summaries, cfg=cfg, out_dir=out)
        results[name] = outputs(out)
    rows, shards = results["mapper"]
    assert results["mapper"] == results["local"]
    assert {r["status"] for r in rows} == {"kept", "too_static"} and shards


@pytest.mark.slow
def test_ray_and_local_engines_write_the_same_manifest_and_shards(videos, tmp_path):
    ray = pytest.importorskip("ray")
    args = [*SMALL, "--no-progress", "--workers", "2"]
    assert curate.main([str(videos), "--out", str(tmp_path / "local"), *args]) == 0
    assert curate.main([str(videos), "--out", str(tmp_path / "ray"), "--engine", "ray", *args]) == 0
    rows, shards = outputs(tmp_path / "ray")
    assert (rows, shards) == outputs(tmp_path / "local")
    assert {r["status"] for r in rows} == {"kept", "too_static"} and shards
    assert not ray.is_initialized()  # the engine shuts down the Ray it started
