"""Demo alignment metrics read the right labels from real demo-world videos, chance from shuffled ones."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.demo_world import PALETTE, all_combinations, generate_world, render_video
from eval.demo_metrics import Label, Prediction, analyse_video, score, score_videos, shape_ious


def _label(c) -> Label:
    return Label(c.color, c.shape, c.direction)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two mp4 videos of each of the 48 combinations (H.264, as the demo writes them)."""
    out = tmp_path_factory.mktemp("world")
    items = generate_world(out, videos_per_combo=2, heldout_videos_per_combo=2, held_out=8, num_frames=16)
    return [(out / it.path, Label(it.color, it.shape, it.direction)) for it in items]


def test_real_videos_score_one(world):
    result = score_videos(world, palette=PALETTE)
    # NOTE: H.264's 2x2 chroma subsampling blurs 10-px shapes; allow 2 shape misses in 96.
    assert result["color_accuracy"] == 1.0
    assert result["direction_accuracy"] == 1.0
    assert result["shape_accuracy"] >= 0.97
    assert len(result["videos"]) == len(world)


def test_shuffled_labels_score_chance(world):
    combos = all_combinations()
    preds = [analyse_video(render_video(c, seed=7 + i), palette=PALETTE) for i, c in enumerate(combos)]
    labels = [_label(c) for c in all_combinations()] * 6
    preds = preds * 6
    rng = np.random.default_rng(0)
    shuffled = [labels[i] for i in rng.permutation(len(labels))]
    s = score(preds, shuffled)
    # chance: 1/4 colours, 1/3 shapes, 1/4 directions; 288 labels give a std of about 0.026.
    assert abs(s["color_accuracy"] - 1 / 4) < 0.1
    assert abs(s["shape_accuracy"] - 1 / 3) < 0.1
    assert abs(s["direction_accuracy"] - 1 / 4) < 0.1
    assert score(preds, labels) == {"color_accuracy": 1.0, "shape_accuracy": 1.0, "direction_accuracy": 1.0}


def test_random_noise_videos_score_near_chance():
    rng = np.random.default_rng(0)
    labels = [_label(c) for c in all_combinations()] * 2  # 96 labels
    noise = rng.integers(0, 256, (len(labels), 16, 32, 32, 3), dtype=np.uint8)  # (96, T, H, W, 3)
    preds = [analyse_video(v, palette=PALETTE) for v in noise]
    s = score(preds, labels)
    # chance 1/4, 1/3, 1/4; 96 videos give a std of about 0.045: 0.15 is over 3 std
    assert abs(s["color_accuracy"] - 1 / 4) < 0.15
    assert abs(s["shape_accuracy"] - 1 / 3) < 0.15
    assert abs(s["direction_accuracy"] - 1 / 4) < 0.15


def test_blank_video_reads_nothing_and_scores_zero():
    frames = np.full((8, 32, 32, 3), 90, np.uint8)
    p = analyse_video(frames, palette=PALETTE)
    assert p == Prediction(None, None, None, 0)
    assert score([p], [Label("red", "circle", "left")]) == {
        "color_accuracy": 0.0,
        "shape_accuracy": 0.0,
        "direction_accuracy": 0.0,
    }


def test_shape_templates_match_themselves():
    square = np.ones((9, 9), bool)
    yy, xx = np.mgrid[0:11, 0:11]
    circle = (yy - 5) ** 2 + (xx - 5) ** 2 <= 30
    assert max(shape_ious(square).items(), key=lambda kv: kv[1])[0] == "square"
    assert max(shape_ious(circle).items(), key=lambda kv: kv[1])[0] == "circle"


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="frames"):
        analyse_video(np.zeros((4, 32, 32), np.uint8), palette=PALETTE)
    with pytest.raises(ValueError, match="labels"):
        score([], [Label("red", "circle", "left")])
