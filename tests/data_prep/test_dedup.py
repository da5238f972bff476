"""Near-duplicate detection: modified copies caught, different content not, the best copy kept."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from data_prep import synthetic as S
from data_prep.dedup import (
    DedupConfig,
    Deduper,
    clip_fingerprint,
    duplicates_of,
    fingerprint_distance,
    hamming,
    keep_order,
)


def _resized(frames, scale):
    import cv2

    h, w = frames.shape[1:3]
    small = [cv2.resize(f, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA) for f in frames]
    return np.stack([cv2.resize(f, (w, h)) for f in small])


@pytest.fixture(scope="module")
def bikes_clips(bikes_video):
    return [bikes_video.frames[s:e] for s, e in [(0, 30), (30, 76), (76, 137), (137, 187), (187, 242)]]


def test_modified_copies_are_duplicates(bikes_clips, tmp_path):
    from data_prep.decode import decode_for_analysis

    clip = bikes_clips[1]
    brighter = np.clip(clip.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    path = S.write_video(tmp_path / "reencoded.mp4", clip, 25.0, crf=35)
    reencoded = decode_for_analysis(path).frames
    ref = clip_fingerprint(clip)
    thr = DedupConfig().hamming_threshold
    for copy in (brighter, _resized(clip, 0.6), reencoded):
        assert fingerprint_distance(ref, clip_fingerprint(copy)) <= thr


def test_different_scenes_are_not_duplicates(bikes_clips):
    dd = Deduper(DedupConfig())
    assert [dd.check_and_add(f"c{i}", clip_fingerprint(c)) for i, c in enumerate(bikes_clips)] == [None] * 5
    for seed in range(3):
        assert dd.check_and_add(f"s{seed}", clip_fingerprint(S.pan(seed=seed))) is None
    assert len(dd) == 8


def test_check_and_add_points_at_earliest_kept_clip(bikes_clips):
    clip = bikes_clips[2]
    copies = [clip, np.clip(clip.astype(np.int16) + 15, 0, 255).astype(np.uint8), _resized(clip, 0.7)]
    dd = Deduper()
    results = [dd.check_and_add(f"clip{i}", clip_fingerprint(c)) for i, c in enumerate(copies)]
    assert results == [None, "clip0", "clip0"]
    assert len(dd) == 1  # duplicates are not added


def test_index_is_exact_against_brute_force():
    rng = np.random.default_rng(0)
    base = [int(x) for x in rng.integers(0, 2**63, 40)]
    prints = []
    for b in base:  # each base hash plus a few copies with 0-14 flipped bits
        prints.append([b, b ^ 1])
        for flips in (3, 8, 14):
            bits = rng.choice(64, flips, replace=False)
            h = b
            for bit in bits:
                h ^= 1 << int(bit)
            prints.append([h, b ^ 1])
    cfg = DedupConfig(hamming_threshold=8)
    dd = Deduper(cfg)
    kept: list[tuple[str, list[int]]] = []
    for i, fp in enumerate(prints):
        expected = next((cid for cid, k in kept if fingerprint_distance(k, fp) <= 8), None)
        got = dd.check_and_add(f"{i:04d}", fp)
        assert got == expected
        if got is None:
            kept.append((f"{i:04d}", fp))


def test_hamming():
    assert hamming(0b1011, 0b0001) == 2 and hamming(2**64 - 1, 0) == 64


def _row(clip_id: str, *, size=(640, 360), bitrate=2e6, duration=2.0, frames=48, fingerprint=(0, 0)) -> dict:
    w, h = size
    return {
        "clip_id": clip_id,
        "source_width": w,
        "source_height": h,
        "source_bitrate": bitrate,
        "duration": duration,
        "num_frames": frames,
        "fingerprint": list(fingerprint),
    }


def test_keep_order_ranks_resolution_then_bitrate_then_length_then_clip_id():
    # NOTE: clip ids sort in the opposite order of quality, as re-encoded copies' ids may.
    rows = [
        _row("a_low_res", size=(320, 180), bitrate=9e6, duration=9.0),
        _row("b_unknown_quality", size=(None, None), bitrate=None),
        _row("c_low_bitrate", bitrate=1e5, duration=9.0),
        _row("d_shorter", duration=1.0, frames=24),
        _row("e_fewer_frames", frames=24),
        _row("f_best"),
        _row("g_best_tie"),
    ]
    expected = ["f_best", "g_best_tie", "e_fewer_frames", "d_shorter", "c_low_bitrate", "a_low_res"]
    expected.append("b_unknown_quality")
    for perm in itertools.islice(itertools.permutations(rows), 0, None, 97):
        assert [r["clip_id"] for r in keep_order(perm)] == expected


def test_duplicates_point_at_the_best_copy_whatever_the_input_order():
    rows = [
        _row("0_reencoded", bitrate=3e5),
        _row("1_downscaled", size=(320, 180), bitrate=8e6),
        _row("2_original", bitrate=4e6),
        _row("3_other", fingerprint=(2**64 - 1, 2**64 - 1)),
    ]
    for perm in itertools.permutations(rows):
        assert duplicates_of(perm) == {"0_reencoded": "2_original", "1_downscaled": "2_original"}


def test_chains_stay_anchored_on_kept_clips():
    prints = {"x": 0, "y": 0b111111, "z": 0b111111111111}  # x ~ y ~ z (6 bits each), x !~ z (12 bits)
    cfg = DedupConfig(hamming_threshold=10)

    def rows(best: str) -> list[dict]:
        return [
            _row(k, size=(1280, 720) if k == best else (640, 360), fingerprint=(h,))
            for k, h in prints.items()
        ]

    # x best, then y, z: y goes to x and is not added, so z (12 bits from x) is kept.
    assert duplicates_of(rows("x"), cfg) == {"y": "x"}
    # y best: x and z both go to y.
    assert duplicates_of(rows("y"), cfg) == {"x": "y", "z": "y"}
    for best in prints:
        found = duplicates_of(rows(best), cfg)
        assert not set(found.values()) & set(found)  # every survivor named is kept
