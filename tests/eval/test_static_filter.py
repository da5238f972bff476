"""The static filter as its own step, following VBench's vbench/cli/static_filter.py @ 986e8884."""

from __future__ import annotations

import json

import pytest

from eval.static_filter import run_static_filter
from pipelines.evaluate import main as eval_main
from tests.eval.conftest import linear_frames, static_frames
from vdiff.io.video import write_mp4


@pytest.fixture
def filter_videos(tmp_path):
    d = tmp_path / "videos"
    d.mkdir()
    for i in range(6):  # six static videos: VBench keeps 5 for a temporal_flickering prompt
        write_mp4(d / f"a still lake-{i}.mp4", static_frames(seed=i), fps=8, crf=0)
    write_mp4(d / "a still lake-6.mp4", linear_frames(), fps=8, crf=0)
    write_mp4(d / "a panning street-0.mp4", linear_frames(), fps=8, crf=0)
    write_mp4(d / "a red car-0.mp4", static_frames(), fps=8, crf=0)  # not a temporal_flickering prompt
    suite = [
        {"prompt_en": "a still lake", "dimension": ["temporal_flickering"]},
        {"prompt_en": "a panning street", "dimension": ["temporal_flickering", "dynamic_degree"]},
        {"prompt_en": "a red car", "dimension": ["color"]},
    ]
    return d, suite


def test_cap_per_prompt_and_vbench_layout(filter_videos, tmp_path):
    videos, suite = filter_videos
    out = tmp_path / "filtered"
    res = run_static_filter(videos, out, suite=suite, progress=False)
    stored = json.loads((out / "filtered_static_video.json").read_text())
    assert stored == res["filtered"]
    assert list(stored) == ["a still lake", "a panning street"]
    assert stored["a still lake"]["static_count"] == 5
    assert [p.split("/")[-1] for p in stored["a still lake"]["static_path"]] == [
        f"a still lake-{i}.mp4" for i in range(5)
    ]
    assert stored["a panning street"] == {"static_count": 0, "static_path": []}
    assert sorted(p.name for p in (out / "filtered_videos").iterdir()) == [
        f"a still lake-{i}.mp4" for i in range(5)
    ]
    info = res["info"]
    assert info["cap_per_prompt"] == 5 and not info["comparable"] and "substitute" in info["method"]
    assert info["fewer_than_cap"] == ["a panning street"]
    # Scope "all": every video's prompt, no cap.
    res_all = run_static_filter(videos, tmp_path / "all", scope="all", progress=False)
    assert res_all["filtered"]["a still lake"]["static_count"] == 6
    assert res_all["filtered"]["a red car"]["static_count"] == 1
    # Nothing vdiff did not write is overwritten.
    with pytest.raises(FileExistsError):
        run_static_filter(videos, out, suite=suite, progress=False)


def test_temporal_flickering_scope_needs_the_suite(filter_videos, tmp_path):
    with pytest.raises(ValueError, match="needs the VBench prompt suite"):
        run_static_filter(filter_videos[0], tmp_path / "o", progress=False)


def test_cli_static_filter_then_score(filter_videos, tmp_path, capsys):
    videos, suite = filter_videos
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    out = tmp_path / "f"
    rc = eval_main(
        [str(videos), "--static-filter", "--out", str(out), "--prompts", str(tmp_path / "suite.json")]
    )
    assert rc == 0 and "kept 5 videos" in capsys.readouterr().out
    rc = eval_main(
        [
            str(out / "filtered_videos"),
            "--out",
            str(tmp_path / "e"),
            "--dimensions",
            "temporal_flickering",
            "--quiet",
        ]
    )
    assert rc == 0
    results = json.loads((tmp_path / "e" / "eval_results.json").read_text())
    assert len(results["temporal_flickering"][1]) == 5


def test_workers_give_the_single_process_result(filter_videos, tmp_path):
    from eval.config import EvalConfig

    videos, suite = filter_videos
    (videos / "a still lake-7.mp4").write_bytes(b"not a video")  # past the cap: never read by VBench
    (videos / "a panning street-1.mp4").write_bytes(b"not a video")
    one = run_static_filter(videos, tmp_path / "one", suite=suite, progress=False)
    two = run_static_filter(
        videos, tmp_path / "two", suite=suite, config=EvalConfig(workers=2), progress=False
    )
    assert two["filtered"] == one["filtered"]
    assert (
        [u["video_path"] for u in two["info"]["unreadable"]]
        == [u["video_path"] for u in one["info"]["unreadable"]]
        == [str(videos / "a panning street-1.mp4")]
    )
    assert sorted(p.name for p in (tmp_path / "two" / "filtered_videos").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "filtered_videos").iterdir()
    )


def test_cli_static_filter_accepts_workers(filter_videos, tmp_path, capsys):
    videos, suite = filter_videos
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    rc = eval_main(
        [
            str(videos),
            "--static-filter",
            "--out",
            str(tmp_path / "f"),
            "--prompts",
            str(tmp_path / "suite.json"),
            "--workers",
            "2",
            "--quiet",
        ]
    )
    assert rc == 0 and "kept 5 videos" in capsys.readouterr().out
