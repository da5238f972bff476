"""VBench formats and scoring against VBench's published constants and formulas."""

from __future__ import annotations

import json

import pytest

from eval.vbench import (
    load_prompts,
    prompt_from_filename,
    validate_results,
    vbench_scores,
    vbench_video_name,
)


def test_video_name_round_trips_through_vbench_prompt_rule():
    name = vbench_video_name("a cat wearing sunglasses, 4k", 3)
    assert name == "a cat wearing sunglasses, 4k-3.mp4"
    assert prompt_from_filename(name) == "a cat wearing sunglasses, 4k"
    assert prompt_from_filename("no index here.mp4") == "no index here"
    with pytest.raises(ValueError, match="file name"):
        vbench_video_name("a/b", 0)


def test_reads_vbench_suite_and_json_map(tmp_path):
    suite = [
        {"prompt_en": "a dog running", "dimension": ["dynamic_degree", "motion_smoothness"]},
        {"prompt_en": "a red car", "dimension": "color", "auxiliary_info": {"color": {"color": "red"}}},
    ]
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    loaded = load_prompts(tmp_path / "suite.json")
    assert loaded[0]["dimension"] == ["dynamic_degree", "motion_smoothness"]
    assert loaded[1]["dimension"] == ["color"]
    (tmp_path / "map.json").write_text(json.dumps({"x.mp4": "a prompt"}))
    assert load_prompts(tmp_path / "map.json") == {"x.mp4": "a prompt"}
    (tmp_path / "bad.json").write_text(json.dumps([{"text": "no prompt_en"}]))
    with pytest.raises(ValueError, match="prompt_en"):
        load_prompts(tmp_path / "bad.json")


def test_scores_match_hand_computed_vbench_example():
    # Raw values chosen so that (value - Min) / (Max - Min) with VBench's NORMALIZE_DIC is a round number.
    values = {
        "subject_consistency": 0.1462 + 0.5 * (1.0 - 0.1462),  # -> 0.5
        "background_consistency": 0.2615 + 0.25 * (1.0 - 0.2615),  # -> 0.25
        "temporal_flickering": 1.0,  # -> 1.0
        "motion_smoothness": 0.706,  # -> 0.0
        "aesthetic_quality": 0.8,
        "imaging_quality": 0.6,
        "dynamic_degree": 0.4,  # weight 0.5 -> 0.2
        "object_class": 0.5,
        "multiple_objects": 0.5,
        "human_action": 0.5,
        "color": 0.5,
        "spatial_relationship": 0.5,
        "scene": 0.4111,  # Max 0.8222 -> 0.5
        "appearance_style": 0.0009 + 0.5 * (0.2855 - 0.0009),  # -> 0.5
        "temporal_style": 0.182,  # Max 0.364 -> 0.5
        "overall_consistency": 0.182,  # -> 0.5
    }
    s = vbench_scores(values)
    quality = (0.5 + 0.25 + 1.0 + 0.0 + 0.8 + 0.6 + 0.2) / 6.5  # weights sum: 6 * 1 + 0.5
    assert s["quality_score"] == pytest.approx(quality, abs=1e-9)
    assert s["semantic_score"] == pytest.approx(0.5, abs=1e-9)
    assert s["total_score"] == pytest.approx((4 * quality + 0.5) / 5, abs=1e-9)
    assert s["total_score"] == pytest.approx(0.5123077, abs=1e-7)


def test_incomplete_groups_have_no_score():
    s = vbench_scores({"temporal_flickering": 0.9})
    assert s["quality_score"] is None and s["total_score"] is None
    assert "subject_consistency" in s["missing_quality"]
    assert s["normalized"]["temporal_flickering"] == pytest.approx((0.9 - 0.6293) / (1 - 0.6293))


def test_results_schema_validation():
    validate_results({"dynamic_degree": [0.5, [{"video_path": "a-0.mp4", "video_results": True}]]})
    with pytest.raises(ValueError):
        validate_results({"dynamic_degree": {"score": 0.5}})
    with pytest.raises(ValueError):
        validate_results({"dynamic_degree": [0.5, [{"video_results": 1.0}]]})
