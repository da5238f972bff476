"""Output clips (frame-accurate re-encoding) and WebDataset shards (atomic, reproducible)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from data_prep.shards import (
    OutputConfig,
    ShardSample,
    encode_clip,
    encode_clips,
    output_frame_indices,
    output_geometry,
    read_shard,
    sample_mp4_frames,
    shard_sizes,
    write_shards,
)
from vdiff.config import ConfigError, load_config
from vdiff.io.video import VideoError, VideoMeta, probe, read_frames, write_mp4


def numbered_video(path, *, n: int = 40, h: int = 64, w: int = 128, fps: float = 24.0):
    """Frame i is flat grey at level 6 * i: which source frame a decoded frame is can be read back."""
    frames = np.stack([np.full((h, w, 3), 6 * i, np.uint8) for i in range(n)])
    write_mp4(path, frames, fps, crf=0)
    return path


def frame_numbers(frames: np.ndarray) -> list[int]:
    return [round(float(f.mean()) / 6) for f in frames]


def test_output_frame_indices_pick_source_frames_without_blending():
    assert output_frame_indices(start=5, end=15, src_fps=24.0, out_fps=24.0) == list(range(5, 15))
    assert output_frame_indices(start=10, end=20, src_fps=30.0, out_fps=15.0) == [10, 12, 14, 16, 18]
    # 25 -> 10 fps: output frame k shows the source frame on screen at k / 10 s.
    expected = [0, 2, 5, 7, 10, 12, 15, 17, 20, 22]
    assert output_frame_indices(start=0, end=25, src_fps=25.0, out_fps=10.0) == expected


def test_output_geometry_keeps_aspect_and_even_sizes():
    meta = VideoMeta(num_frames=10, fps=25.0, width=641, height=273)
    assert output_geometry(meta, OutputConfig()) == (25.0, 640, 272)
    assert output_geometry(meta, OutputConfig(fps=12.5, short_side=136)) == (12.5, 320, 136)
    with pytest.raises(ConfigError, match="samples_per_shard"):
        load_config(OutputConfig, overrides=["samples_per_shard=0"])


def test_encode_clip_is_frame_accurate_at_the_source_rate(tmp_path):
    src = numbered_video(tmp_path / "n.mp4")
    meta = probe(src)
    mp4, n = encode_clip(src, meta=meta, start=7, end=19, cfg=OutputConfig(crf=0))
    (tmp_path / "clip.mp4").write_bytes(mp4)
    assert n == 12
    assert frame_numbers(read_frames(tmp_path / "clip.mp4")) == list(range(7, 19))


def test_encode_clip_resamples_fps_and_resizes(tmp_path):
    src = numbered_video(tmp_path / "n.mp4")
    cfg = OutputConfig(fps=8.0, short_side=32, crf=0)
    mp4, n = encode_clip(src, meta=probe(src), start=4, end=28, cfg=cfg)
    assert n == 8
    (tmp_path / "clip.mp4").write_bytes(mp4)
    out = probe(tmp_path / "clip.mp4")
    assert (out.width, out.height, out.fps, out.num_frames) == (64, 32, 8.0, 8)
    assert frame_numbers(read_frames(tmp_path / "clip.mp4")) == [4, 7, 10, 13, 16, 19, 22, 25]
    assert frame_numbers(sample_mp4_frames(mp4, 2)) == [10, 22]


def test_clips_of_the_same_source_encode_to_the_same_bytes_whatever_the_heap_held(tmp_path):
    """Shard bytes are reproducible: the same spans and settings give the same clip bytes every time."""
    y, x = np.mgrid[0:288, 0:680]
    background = np.stack([x * 255 // 680, y * 255 // 288, (x + y) * 255 // 968], -1).astype(np.uint8)
    frames = np.repeat(background[None], 60, axis=0)  # (T, H, W, 3)
    for i in range(60):
        frames[i, 80:180, 8 * i : 8 * i + 100] = (220, 40, 40)
    write_mp4(tmp_path / "src.mp4", frames, 24.0, crf=12)
    meta = probe(tmp_path / "src.mp4")
    cfg = OutputConfig(short_side=144, threads=1)  # 340x144 clips, resized by swscale
    digests = set()
    for seed in range(4):
        rng = np.random.default_rng(seed)
        junk = [rng.bytes(int(n)) for n in rng.integers(1_000, 200_000, 300)]
        del junk  # NOTE: freed memory now holds other bytes than before the previous encode
        clips = encode_clips(tmp_path / "src.mp4", meta=meta, spans=[(0, 24), (30, 60)], cfg=cfg)
        digests.add(tuple(hashlib.sha256(mp4).hexdigest() for mp4, _ in clips))
    assert len(digests) == 1


def _samples(n: int) -> list[ShardSample]:
    def load(i: int) -> bytes:
        return bytes([i]) * 100

    return [
        ShardSample(clip_id=f"clip{i:02d}", load_mp4=lambda i=i: load(i), meta={"caption": f"c{i}", "i": i})
        for i in range(n)
    ]


def test_shards_are_webdataset_tars_packed_in_order_and_reproducible(tmp_path):
    import webdataset as wds

    where = write_shards(_samples(5), tmp_path, samples_per_shard=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert where == {f"clip{i:02d}": f"shard-{i // 2:06d}.tar" for i in range(5)}
    assert [m for m, _ in read_shard(tmp_path / "shard-000001.tar")] == [
        "clip02.mp4", "clip02.txt", "clip02.json", "clip03.mp4", "clip03.txt", "clip03.json",
    ]  # fmt: skip

    urls = [str(tmp_path / n) for n in names]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == [f"clip{i:02d}" for i in range(5)]
    assert json.loads(samples[3]["json"]) == {"caption": "c3", "i": 3}
    assert samples[4]["mp4"] == bytes([4]) * 100

    before = {n: (tmp_path / n).read_bytes() for n in names}
    write_shards(_samples(5), tmp_path, samples_per_shard=2)
    assert {n: (tmp_path / n).read_bytes() for n in names} == before


def test_captions_are_a_txt_member_that_webdataset_groups_with_the_clip(tmp_path):
    import webdataset as wds

    samples = [
        ShardSample(
            clip_id="a", load_mp4=lambda: b"mp4-a", meta={"caption": "Ein Fuchs läuft 🦊", "fps": 8.0}
        ),
        ShardSample(clip_id="b", load_mp4=lambda: b"mp4-b", meta={"caption": "", "fps": 8.0}),
        ShardSample(clip_id="c", load_mp4=lambda: b"mp4-c", meta={"caption": None}),
        ShardSample(clip_id="d", load_mp4=lambda: b"mp4-d", meta={"caption": "  two\nlines "}),
    ]
    write_shards(samples, tmp_path, samples_per_shard=10)
    members = read_shard(tmp_path / "shard-000000.tar")
    assert [m for m, _ in members] == [
        "a.mp4", "a.txt", "a.json", "b.mp4", "b.json", "c.mp4", "c.json", "d.mp4", "d.txt", "d.json",
    ]  # fmt: skip
    assert dict(members)["a.txt"] == "Ein Fuchs läuft 🦊".encode()

    dataset = wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False, empty_check=False)
    got = {s["__key__"]: s for s in dataset.decode()}
    assert sorted(got) == ["a", "b", "c", "d"]
    assert got["a"]["txt"] == "Ein Fuchs läuft 🦊" == got["a"]["json"]["caption"]
    assert got["a"]["mp4"] == b"mp4-a" and got["a"]["json"]["fps"] == 8.0
    assert "txt" not in got["b"] and "txt" not in got["c"]  # no caption, no .txt
    assert got["d"]["txt"] == "  two\nlines " == got["d"]["json"]["caption"]


def test_small_runs_are_spread_over_min_shards_deterministically(tmp_path):
    assert shard_sizes(20, samples_per_shard=100, min_shards=8) == [3, 3, 3, 3, 2, 2, 2, 2]
    assert shard_sizes(3, samples_per_shard=100, min_shards=8) == [1, 1, 1]
    assert shard_sizes(5000, samples_per_shard=100, min_shards=8) == [100] * 50
    assert shard_sizes(250, samples_per_shard=100, min_shards=1) == [84, 83, 83]
    assert shard_sizes(0, samples_per_shard=100, min_shards=8) == []
    assert (OutputConfig().samples_per_shard, OutputConfig().min_shards) == (100, 8)
    with pytest.raises(ConfigError, match="min_shards"):
        load_config(OutputConfig, overrides=["min_shards=0"])

    where = write_shards(_samples(10), tmp_path, samples_per_shard=100, min_shards=4)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"shard-{n:06d}.tar" for n in range(4)]
    # Sorted order is kept: shard n holds the next 3, 3, 2, 2 clips.
    shard_of = [names.index(where[f"clip{i:02d}"]) for i in range(10)]
    assert shard_of == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    before = {n: (tmp_path / n).read_bytes() for n in names}
    write_shards(_samples(10), tmp_path, samples_per_shard=100, min_shards=4)
    assert {n: (tmp_path / n).read_bytes() for n in names} == before


def test_rewriting_with_fewer_shards_removes_stale_shards_and_temp_files(tmp_path):
    write_shards(_samples(5), tmp_path, samples_per_shard=2)
    (tmp_path / ".shard-000003.tar.abc.tmp").write_bytes(b"partial")
    write_shards(_samples(3), tmp_path, samples_per_shard=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar"]


def test_rewriting_shards_keeps_files_it_did_not_write(tmp_path):
    theirs = {"mine.tar": b"user", "shard-old.tar": b"user", ".notes.tmp": b"user", ".x.tar.1.tmp": b"user"}
    for name, data in theirs.items():
        (tmp_path / name).write_bytes(data)
    write_shards(_samples(5), tmp_path, samples_per_shard=2)
    write_shards(_samples(3), tmp_path, samples_per_shard=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*theirs, "shard-000000.tar"])
    assert all((tmp_path / name).read_bytes() == data for name, data in theirs.items())


def test_a_failing_sample_leaves_no_shard_under_its_final_name(tmp_path):
    def boom() -> bytes:
        raise OSError("disk full")

    bad = [*_samples(1), ShardSample(clip_id="bad", load_mp4=boom, meta={})]
    with pytest.raises(OSError, match="disk full"):
        write_shards(bad, tmp_path, samples_per_shard=10)
    assert list(tmp_path.iterdir()) == []


def test_encode_clips_decodes_once_for_many_spans_and_refuses_frames_it_cannot_decode(tmp_path, monkeypatch):
    from data_prep import shards

    src = numbered_video(tmp_path / "n.mp4")
    meta = probe(src)
    spans = [(20, 30), (2, 9), (31, 40)]
    cfg = OutputConfig(fps=12.0, crf=0)

    def numbers(results) -> list[list[int]]:
        out = []
        for k, (mp4, n) in enumerate(results):
            (tmp_path / f"{k}.mp4").write_bytes(mp4)
            out.append(frame_numbers(read_frames(tmp_path / f"{k}.mp4")))
            assert n == len(out[-1])
        return out

    expected = [[20, 22, 24, 26, 28], [2, 4, 6], [31, 33, 35, 37]]  # 9 frames at 24 fps -> 4 at 12
    assert numbers(shards.encode_clips(src, meta=meta, spans=spans, cfg=cfg)) == expected
    # Frames the encoding pass cannot decode are an error naming the file (the analysis pass
    # numbered them with the same decoder; another decoder could number them differently).
    monkeypatch.setattr(shards, "_decode_in_order", lambda reader, wanted: iter(()))
    with pytest.raises(VideoError, match=r"n\.mp4.*could not be decoded again"):
        shards.encode_clips(src, meta=meta, spans=spans, cfg=cfg)
