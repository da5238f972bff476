"""Run summary and report.html from a finished run's outputs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from data_prep import synthetic
from data_prep.engine import CurateConfig, VideoTask, finalize, prepare_out_dir, process_video
from data_prep.inputs import expand_inputs
from data_prep.report import frame_strip, render_html, summary_text
from data_prep.shards import read_shard
from pipelines import curate
from vdiff.config import load_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    moving = synthetic.write_video(folder / "in" / "moving.mp4", synthetic.moving_shapes(num_frames=36), 24.0)
    (folder / "in" / "moving.txt").write_text("a <b>red</b> circle & friends")
    synthetic.write_video(folder / "in" / "still.mp4", synthetic.static_shot(num_frames=36), 24.0)
    (folder / "in" / "broken.mp4").write_bytes(b"\x00" * 1000)
    cfg = load_config(CurateConfig, overrides=["quality.min_width=64", "quality.min_height=48"])
    out = folder / "out"
    prepare_out_dir(out)
    items = expand_inputs([folder / "in"])
    tasks = [VideoTask(index=i, path=it.path, work_dir=out / "work", cfg=cfg) for i, it in enumerate(items)]
    summaries = [process_video(t) for t in tasks]
    report = finalize(items, summaries, cfg=cfg, out_dir=out, started=0.0)
    assert [e["path"] for e in report["inputs"]] == [str(p) for p in sorted((folder / "in").glob("*.mp4"))]
    assert moving.is_file()
    return out, report


def test_summary_names_counts_errors_and_time(run):
    _, report = run
    text = summary_text(report)
    assert "3 input(s), 1 error(s)" in text
    assert re.search(r"kept\s+1", text) and re.search(r"too_static\s+1", text)
    assert "broken.mp4" in text
    assert "wall" in text


def test_report_html_has_counts_histograms_and_one_strip_per_kept_clip(run):
    out, report = run
    path = render_html(out)
    page = path.read_text()
    assert path == out / "report.html"
    for status, n in report["counts"].items():
        assert f"<tr><td>{status}</td><td>{n}</td></tr>" in page
    assert page.count("alt='motion'") == 1 and page.count("alt='duration'") == 1
    kept = [m for m, _ in read_shard(out / "shards" / "shard-000000.tar") if m.endswith(".mp4")]
    assert len(kept) == report["kept"] == 1
    assert page.count(f"alt='{kept[0][:-4]}'") == 1
    # Captions and paths are escaped, never injected as HTML.
    assert "a &lt;b&gt;red&lt;/b&gt; circle &amp; friends" in page and "<b>red</b>" not in page


def test_frame_strip_puts_evenly_spaced_frames_side_by_side(run):
    out, _ = run
    members = dict(read_shard(out / "shards" / "shard-000000.tar"))
    mp4 = next(v for k, v in members.items() if k.endswith(".mp4"))
    strip = frame_strip(mp4, n=3, height=36)
    assert strip.shape == (36, 3 * 48, 3) and strip.dtype == np.uint8  # 128x96 frames at 36 px high
    assert not np.array_equal(strip[:, :48], strip[:, -48:])  # the shape moved between the frames


def test_cli_report_renders_and_explains_a_missing_run(run, tmp_path, capsys):
    out, _ = run
    (out / "report.html").unlink()
    assert curate.main(["--report", str(out)]) == 0
    assert (out / "report.html").is_file()
    assert curate.main(["--report", str(tmp_path)]) == 2
    assert "vdiff curate INPUT... --out" in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["kept"] == 1
