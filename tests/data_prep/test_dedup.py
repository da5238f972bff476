"""Near-duplicate detection: modified copies caught, different content not, deterministic order."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep import synthetic as S
from data_prep.dedup import DedupConfig, Deduper, clip_fingerprint, fingerprint_distance, hamming


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
