"""evaluate(): one decode per video, VBench results schema, substitutes kept apart, bad input listed."""

from __future__ import annotations

import json

import pytest

import eval.runner as runner
from eval import EvalConfig, MissingWeightsError, WeightsConfig, evaluate, vbench_video_name
from eval.vbench import validate_results


def test_custom_mode_scores_folder_and_lists_bad_videos(videos_dir, tmp_path, monkeypatch):
    calls = []
    real_decode = runner.decode
    monkeypatch.setattr(runner, "decode", lambda p: calls.append(p) or real_decode(p))
    out = evaluate(videos_dir, tmp_path / "out", progress=False)
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    validate_results(results)
    # Each readable video is decoded once for all three dimensions; the broken one is tried once.
    assert sorted(p.name for p in calls) == sorted(p.name for p in videos_dir.iterdir())
    # Substitute methods are stored under NAME:substitute and never in the leaderboard scores.
    assert set(results) == {
        "temporal_flickering:substitute",
        "dynamic_degree:substitute",
        "motion_smoothness:substitute",
    }
    info = out["info"]
    assert info["scores"]["leaderboard"]["normalized"] == {}
    assert set(info["scores"]["with_substitutes"]["normalized"]) == {
        "temporal_flickering",
        "dynamic_degree",
        "motion_smoothness",
    }
    dyn = {
        e["video_path"].split("/")[-1]: e["video_results"] for e in results["dynamic_degree:substitute"][1]
    }
    assert dyn == {"a still lake-0.mp4": False, "a panning street-0.mp4": True}
    assert results["dynamic_degree:substitute"][0] == 0.5
    # The moving video is excluded from temporal_flickering by the static filter, with its reason.
    excluded = info["dimensions"]["temporal_flickering"]["excluded"]
    assert [e["video_path"].split("/")[-1] for e in excluded] == ["a panning street-0.mp4"]
    assert "not static" in excluded[0]["reason"]
    assert [e["video_path"].split("/")[-1] for e in info["skipped"]] == ["a broken clip-0.mp4"]
    assert "not a readable video" in info["skipped"][0]["reason"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert (
        "a broken clip-0.mp4" in html and "data:image/png;base64" in html and "data:image/jpeg;base64" in html
    )


def test_vbench_suite_mode_expects_five_names_and_lists_missing(videos_dir, tmp_path):
    suite = [
        {"prompt_en": "a still lake", "dimension": ["temporal_flickering"]},
        {"prompt_en": "a panning street", "dimension": ["dynamic_degree"]},
    ]
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    out = evaluate(videos_dir, tmp_path / "out", prompts=tmp_path / "suite.json", progress=False)
    results, info = out["results"], out["info"]
    assert info["mode"] == "vbench_standard"
    # Each prompt is scored only on the dimensions the suite lists for it.
    assert [e["video_path"].split("/")[-1] for e in results["dynamic_degree:substitute"][1]] == [
        "a panning street-0.mp4"
    ]
    assert "motion_smoothness:substitute" not in results
    missing = {e["video_path"].split("/")[-1] for e in info["missing"]}
    want = {vbench_video_name(p, i) for p in ("a still lake", "a panning street") for i in range(1, 5)}
    assert missing == want
    assert all(e["reason"] == "file not found" for e in info["missing"])


def test_missing_weights_fail_before_any_video_is_read(videos_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("VDIFF_DINO", raising=False)

    def no_decode(path):
        raise AssertionError(f"decoded {path} before checking weights")

    monkeypatch.setattr(runner, "decode", no_decode)
    with pytest.raises(MissingWeightsError, match="VDIFF_DINO"):
        evaluate(
            videos_dir, tmp_path / "out", dimensions=["dynamic_degree", "subject_consistency"], progress=False
        )
    assert not (tmp_path / "out").exists()


def test_unknown_dimension_is_a_clear_error(videos_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown eval dimension 'dynamic'; available"):
        evaluate(videos_dir, tmp_path / "out", dimensions=["dynamic"], config=EvalConfig(), progress=False)


def test_json_map_gives_prompts_and_lists_missing_files(videos_dir, tmp_path):
    prompts = {"a still lake-0.mp4": "calm water", "gone.mp4": "a missing video"}
    out = evaluate(
        videos_dir, tmp_path / "out", dimensions=["motion_smoothness"], prompts=prompts, progress=False
    )
    entries = out["results"]["motion_smoothness:substitute"][1]
    assert [e["video_path"].split("/")[-1] for e in entries] == ["a still lake-0.mp4"]
    assert out["info"]["mode"] == "custom"
    assert out["info"]["missing"] == [
        {"prompt": "a missing video", "video_path": str(videos_dir / "gone.mp4"), "reason": "file not found"}
    ]


def test_comparable_dimension_keeps_vbench_name_and_enters_leaderboard(videos_dir, tiny_clip, tmp_path):
    cfg = EvalConfig(weights=WeightsConfig(clip_b32=str(tiny_clip)))
    dims = ["background_consistency", "dynamic_degree"]
    out = evaluate(videos_dir, tmp_path / "out", dimensions=dims, config=cfg, progress=False)
    results = out["results"]
    assert set(results) == {"background_consistency", "dynamic_degree:substitute"}
    # What VBench's cal_final_score.py reads: key.replace("_", " ") -> aggregate.
    upload = {k.replace("_", " "): v[0] for k, v in results.items()}
    assert "background consistency" in upload and "dynamic degree" not in upload
    leaderboard = out["info"]["scores"]["leaderboard"]["normalized"]
    assert leaderboard == {
        "background_consistency": pytest.approx((results["background_consistency"][0] - 0.2615) / 0.7385)
    }


def test_folder_of_only_bad_videos_still_writes_outputs(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "x-0.mp4").write_bytes(b"")
    out = evaluate(tmp_path / "v", tmp_path / "out", progress=False)
    assert out["results"] == {} and "empty file" in out["info"]["skipped"][0]["reason"]
    assert (tmp_path / "out" / "report.html").is_file()
