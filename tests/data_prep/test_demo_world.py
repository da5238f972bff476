"""The demo world: combinations, held-out split, rendering and the files it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep.demo_world import (
    DIRECTIONS,
    PALETTE,
    SHAPES,
    Combo,
    all_combinations,
    generate_world,
    held_out_combinations,
    parse_caption,
    render_video,
    train_combinations,
)
from vdiff.io.video import probe


def test_held_out_split_is_disjoint_and_covers_every_word():
    held = held_out_combinations(8)
    train = train_combinations(held)
    assert len(set(held)) == 8
    assert not set(held) & set(train)
    assert len(train) + len(held) == len(all_combinations()) == len(PALETTE) * len(SHAPES) * len(DIRECTIONS)
    # NOTE: every word of a held-out caption must be seen in training, or the split tests nothing.
    for attr in ("color", "shape", "direction"):
        assert {getattr(c, attr) for c in held} <= {getattr(c, attr) for c in train}
        assert len({getattr(c, attr) for c in held}) == len({getattr(c, attr) for c in all_combinations()})


def test_caption_round_trip():
    for c in all_combinations():
        assert parse_caption(c.caption) == c
    assert Combo("red", "circle", "left").caption == "a red circle moving left"
    assert parse_caption("a purple circle moving left") is None
    assert parse_caption("a person riding a bike") is None


def test_render_moves_the_shape_in_its_direction():
    for direction, (dx, dy) in DIRECTIONS.items():
        frames = render_video(Combo("yellow", "square", direction), num_frames=8, size=32, seed=3)
        assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
        # NOTE: yellow is far brighter than any background; its centroid tracks the shape.
        c = []
        for f in frames:
            ys, xs = np.nonzero((f[..., 0] > 200) & (f[..., 1] > 180) & (f[..., 2] < 120))
            c.append((xs.mean(), ys.mean()))
        move = np.subtract(c[-1], c[0])
        assert np.sign(move[0]) == dx or dx == 0
        assert np.sign(move[1]) == dy or dy == 0
        assert abs(move[0] * dx + move[1] * dy) > 10  # travels over 10 px of 32
        assert abs(move[0] * dy + move[1] * dx) < 1  # and not across


def test_render_is_deterministic_and_seed_dependent():
    c = Combo("red", "triangle", "up")
    a, b = render_video(c, seed=1), render_video(c, seed=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_video(c, seed=2))


def test_unknown_words_are_errors():
    with pytest.raises(ValueError, match="purple"):
        render_video(Combo("purple", "circle", "left"))
    with pytest.raises(ValueError, match="held_out"):
        held_out_combinations(40)


def test_generate_world_writes_videos_captions_and_manifest(tmp_path):
    items = generate_world(tmp_path, videos_per_combo=1, heldout_videos_per_combo=1, held_out=4, num_frames=8)
    world = json.loads((tmp_path / "world.json").read_text())
    assert len(items) == 48 == len(world["videos"])
    assert sum(it.split == "heldout" for it in items) == 4
    held = {Combo(**c) for c in world["held_out"]}
    for it in items:
        video = tmp_path / it.path
        assert (Combo(it.color, it.shape, it.direction) in held) == (it.split == "heldout")
        assert video.with_suffix(".txt").read_text().strip() == it.caption
    meta = probe(tmp_path / items[0].path)
    assert (meta.num_frames, meta.width, meta.height) == (8, 32, 32)
