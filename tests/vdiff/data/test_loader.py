"""Shard indexing, clip decoding and the per-rank deterministic loader."""

from __future__ import annotations

import io
import itertools
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from tests.vdiff.data.conftest import clip_frames
from vdiff.data import (
    DataConfig,
    SampleReader,
    SampleRef,
    ShardLoader,
    clip_frame_indices,
    clip_meta,
    index_shard,
    list_shards,
    load_raw_sample,
    probe_video_bytes,
    read_sample,
    resize_crop,
    split_member_name,
)
from vdiff.data.loader import DataError
from vdiff.io.video import VideoError, VideoMeta, encode_mp4


def test_member_names_split_like_webdataset() -> None:
    assert split_member_name("clip-001.mp4") == ("clip-001", "mp4")
    assert split_member_name("a/b/clip.seg.JSON") == ("a/b/clip", "seg.json")
    assert split_member_name("README") == ("README", "")


def test_index_and_random_access_read(clip_shards: Path) -> None:
    shards = list_shards(clip_shards)
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    refs = index_shard(shards[1])
    assert [r.key for r in refs] == ["clip-004", "clip-005", "clip-006", "clip-007"]
    with tarfile.open(shards[1]) as tar:
        want = tar.extractfile("clip-006.json").read()  # type: ignore[union-attr]
    assert read_sample(refs[2], ("json",)) == {"json": want}
    with pytest.raises(FileNotFoundError, match=r"data\.path"):
        list_shards(clip_shards / "missing")


def test_frame_indices_follow_target_fps() -> None:
    assert clip_frame_indices(100, 24.0, num_frames=4, fps=8.0) == [0, 3, 6, 9]
    assert clip_frame_indices(100, 24.0, num_frames=3, fps=8.0, start=10) == [10, 13, 16]
    assert clip_frame_indices(5, 10.0, num_frames=4, fps=5.0) == [0, 2, 4, 4]  # padded with the last frame
    assert clip_frame_indices(10, 10.0, num_frames=3, fps=20.0) == [0, 1, 1]  # 0, 0.5→1 (round half up), 1


def test_resize_crop_covers_and_centres() -> None:
    x = torch.arange(4 * 8, dtype=torch.float32).reshape(1, 1, 4, 8).expand(2, 3, 4, 8)
    out = resize_crop(x, height=4, width=4)  # no scaling needed: centre columns 2..5
    assert torch.equal(out, x[..., 2:6])
    assert resize_crop(torch.rand(2, 3, 24, 32), height=16, width=16).shape == (2, 3, 16, 16)


def test_raw_batches_decode_the_right_frames(clip_shards: Path) -> None:
    cfg = DataConfig(path=str(clip_shards), num_frames=3, fps=6.0, height=12, width=16, shuffle=False)
    loader = ShardLoader(cfg, batch_size=2, seed=0)
    assert loader.kind == "raw" and loader.steps_per_epoch == 5
    batch = next(iter(loader))
    assert batch["video"].shape == (2, 3, 3, 12, 16) and batch["caption"] == ["clip 0", "clip 1"]
    # 12 fps -> 6 fps takes source frames 0, 2, 4; clip i frame t has grey level 10 i + 15 t (H.264: ±3)
    levels = (batch["video"].mean(dim=(1, 3, 4)) + 1) * 127.5  # (B, T)
    want = torch.tensor([[0.0, 30.0, 60.0], [10.0, 40.0, 70.0]])
    assert (levels - want).abs().max() < 3.0


def _keys(loader: ShardLoader, n: int) -> list[list[str]]:
    return [b["key"] for b in itertools.islice(iter(loader), n)]


def test_ranks_split_each_global_batch_and_order_is_seeded(clip_shards: Path) -> None:
    cfg = DataConfig(path=str(clip_shards), num_frames=2, fps=12.0, height=8, width=8)
    one = _keys(ShardLoader(cfg, batch_size=4, seed=3), 6)  # 10 samples: 2 steps per epoch, 3 epochs
    r0 = _keys(ShardLoader(cfg, batch_size=2, rank=0, world=2, seed=3), 6)
    r1 = _keys(ShardLoader(cfg, batch_size=2, rank=1, world=2, seed=3), 6)
    assert [a + b for a, b in zip(r0, r1)] == one  # global batches do not depend on the dp degree
    assert all(not set(a) & set(b) for a, b in zip(r0, r1))
    epoch0, epoch1 = set(one[0] + one[1]), set(one[2] + one[3])
    assert len(epoch0) == 8 and one[:2] != one[2:4]  # no repeats within an epoch; reshuffled each epoch
    assert one == _keys(ShardLoader(cfg, batch_size=4, seed=3), 6)
    assert one != _keys(ShardLoader(cfg, batch_size=4, seed=4), 6)
    assert epoch1 <= {f"clip-{i:03d}" for i in range(10)}


def test_loader_resumes_from_its_state(clip_shards: Path) -> None:
    cfg = DataConfig(path=str(clip_shards), num_frames=4, fps=12.0, height=8, width=8, random_offset=True)
    a = ShardLoader(cfg, batch_size=3, seed=1)
    it = iter(a)
    for _ in range(4):
        next(it)
    state = a.state_dict()
    assert state == {"epoch": 1, "step_in_epoch": 1}
    rest = [next(it) for _ in range(3)]
    b = ShardLoader(cfg, batch_size=3, seed=1)
    b.load_state_dict(state)
    for x, y in zip(rest, itertools.islice(iter(b), 3)):
        assert x["key"] == y["key"] and torch.equal(x["video"], y["video"])


def test_too_little_data_is_a_clear_error(clip_shards: Path) -> None:
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShardLoader(DataConfig(path=str(clip_shards)), batch_size=6, world=2)
    with pytest.raises(ValueError, match="outside"):
        ShardLoader(DataConfig(path=str(clip_shards)), batch_size=1, rank=2, world=2)


def test_random_offset_stays_inside_the_clip(clip_shards: Path) -> None:
    cfg = DataConfig(path=str(clip_shards), num_frames=4, fps=12.0, height=8, width=8, random_offset=True)
    loader = ShardLoader(cfg, batch_size=5, seed=0, world=2)
    starts = []
    for b in itertools.islice(iter(loader), 4):
        levels = ((b["video"].mean(dim=(1, 3, 4)) + 1) * 127.5).numpy()  # (B, T)
        ids = np.array([int(k[-3:]) for k in b["key"]])
        t0 = (levels[:, 0] - 10 * ids) / 15
        assert np.all(np.abs(np.diff(levels, axis=1) - 15) < 4)  # consecutive source frames
        starts.extend(np.round(t0).tolist())
    assert min(starts) >= 0 and max(starts) <= 8 and len(set(starts)) > 1


def test_aspect_ratio_buckets_group_batches_by_size(mixed_shards: Path) -> None:
    cfg = DataConfig(path=str(mixed_shards), num_frames=2, fps=12.0, buckets=["12x16", "16x12", "16x16"])
    assert cfg.sizes() == [(12, 16), (16, 12), (16, 16)]
    loader = ShardLoader(cfg, batch_size=2, seed=0)
    sizes = [(12, 16)] * 4 + [(16, 12)] * 3 + [(16, 16)] * 2
    want = {f"clip-{i:03d}": size for i, size in enumerate(sizes)}
    seen = 0
    for _ in range(2 * loader.steps_per_epoch):
        batch = next(iter(loader))
        size = tuple(batch["video"].shape[-2:])
        assert all(want[k] == size for k in batch["key"]), (batch["key"], size)
        seen += 1
    # per epoch: 2 landscape, 1 portrait (one left over) and 1 square batch of 2
    assert loader.steps_per_epoch == 4 and seen == 8
    # ranks still split each global batch
    r0 = ShardLoader(cfg, batch_size=1, rank=0, world=2, seed=0)
    r1 = ShardLoader(cfg, batch_size=1, rank=1, world=2, seed=0)
    one = ShardLoader(cfg, batch_size=2, seed=0)
    for step in range(4):
        assert r0.batch_indices(0, step) + r1.batch_indices(0, step) == one.batch_indices(0, step)
    with pytest.raises(ValueError, match="HxW"):
        DataConfig(buckets=["32"]).validate()


def test_a_corrupt_clip_is_an_error_naming_it(tmp_path: Path) -> None:
    with wds.TarWriter(str(tmp_path / "bad.tar")) as w:
        meta = json.dumps({"caption": "x", "fps": 8.0, "num_frames": 4, "width": 8, "height": 8})
        w.write({"__key__": "broken", "mp4": b"\x00not a video" * 10, "json": meta})
    cfg = DataConfig(path=str(tmp_path / "bad.tar"), num_frames=2, height=8, width=8, on_error="raise")
    loader = ShardLoader(cfg, batch_size=1)
    with pytest.raises(VideoError, match=r"bad\.tar:broken\.mp4"):
        next(iter(loader))
    # on_error=skip skips bad samples, not a dataset with nothing readable: that stays an error
    cfg.on_error = "skip"
    with pytest.raises(DataError, match=r"1 samples in a row could not be read.*bad\.tar:broken\.mp4"):
        next(iter(ShardLoader(cfg, batch_size=1)))


def shards_with_bad_samples(root: Path) -> Path:
    """clip_shards' layout (10 clips of 12 frames, 3 shards) where clip-005 is not a video and
    clip-008's json says num_frames=0."""
    (root / "shards").mkdir(parents=True)
    for s, ids in enumerate([range(0, 4), range(4, 8), range(8, 10)]):
        with wds.TarWriter(str(root / "shards" / f"shard-{s:06d}.tar")) as w:
            for i in ids:
                meta = {"caption": f"clip {i}", "fps": 12.0, "num_frames": 0 if i == 8 else 12,
                        "width": 32, "height": 24}  # fmt: skip
                mp4 = encode_mp4(clip_frames(i, num_frames=12, height=24, width=32), 12.0)
                if i == 5:
                    mp4 = b"\x00not a video" * 10
                w.write({"__key__": f"clip-{i:03d}", "mp4": mp4, "json": json.dumps(meta)})
    return root


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_samples_are_replaced_by_the_next_in_shard_order_and_resume_reads_the_same(
    tmp_path: Path, workers: int
) -> None:
    root = shards_with_bad_samples(tmp_path / "data")
    cfg = DataConfig(path=str(root), num_frames=2, fps=6.0, height=8, width=8, num_workers=workers)
    loader = ShardLoader(cfg, batch_size=2, seed=0)
    batches = list(itertools.islice(iter(loader), 10))  # 2 epochs of 5 steps
    for epoch in range(2):
        order = [f"clip-{i:03d}" for i in loader.order(epoch)]
        # clip-005 (not a video) reads as clip-006 and clip-008 (num_frames=0) as clip-009, in place
        want = [{"clip-005": "clip-006", "clip-008": "clip-009"}.get(k, k) for k in order]
        assert [k for b in batches[5 * epoch : 5 * epoch + 5] for k in b["key"]] == want
    assert loader.skipped == 4  # both bad samples, in each epoch
    shards = [str(p) for p in list_shards(root)]
    listed = sorted((r["shard"], r["key"], r["epoch"]) for r in loader.bad_samples)  # each once
    assert listed == [(shards[1], "clip-005", 0), (shards[2], "clip-008", 0)]
    errors = {r["key"]: r["error"] for r in loader.bad_samples}
    assert re.search(r"shard-000001\.tar:clip-005\.mp4: not a decodable video", errors["clip-005"])
    assert re.search(r"shard-000002\.tar: clip-008\.json says num_frames=0", errors["clip-008"])
    # a loader resumed mid-stream (from a state taken after 3 batches) reads the same batches and counts
    again = ShardLoader(cfg, batch_size=2, seed=0)
    it = iter(again)
    for _ in range(3):
        next(it)
    state = again.state_dict()
    resumed = ShardLoader(cfg, batch_size=2, seed=0)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as a checkpoint stores it
    rest = list(itertools.islice(iter(resumed), 7))
    for a, b in zip(rest, batches[3:]):
        assert a["key"] == b["key"] and torch.equal(a["video"], b["video"])
    assert (resumed.skipped, resumed.bad_samples) == (loader.skipped, loader.bad_samples)
    loader.close(), again.close(), resumed.close()


def test_on_error_raise_names_the_shard_and_the_sample(tmp_path: Path) -> None:
    root = shards_with_bad_samples(tmp_path / "data")
    cfg = DataConfig(path=str(root), num_frames=2, fps=6.0, height=8, width=8, num_workers=0)
    cfg.shuffle, cfg.on_error = False, "raise"
    it = iter(ShardLoader(cfg, batch_size=1))
    for _ in range(5):
        next(it)
    with pytest.raises(VideoError, match=r"shard-000001\.tar:clip-005\.mp4"):
        next(it)
    # an error from deeper down that does not name the sample gets its shard and key
    ref = index_shard(list_shards(root)[0])[0]
    not_json = SampleRef(shard=ref.shard, key=ref.key, members={**ref.members, "json": ref.members["mp4"]})
    with pytest.raises(ValueError, match=r"shard-000000\.tar: clip-000\.json is not valid JSON"):
        SampleReader([not_json], cfg, kind="raw", seed=0).load(0, 0)
    listed = tmp_path / "list.tar"
    _write_tar(listed, [("a.mp4", b"x"), ("a.json", b"[12, 8]")])
    with pytest.raises(ValueError, match=r"list\.tar: a\.json holds a list"):
        load_raw_sample(index_shard(listed)[0], cfg)


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar of ``members`` in order, as any tool might write one (no vdiff code involved)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _encode(
    fmt: str, frames: np.ndarray, fps: int, *, codec: str = "libx264", pix_fmt: str = "yuv420p"
) -> bytes:
    """``frames`` (T, H, W, 3) uint8 in container ``fmt`` (no frame: the header alone)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        container.start_encoding()
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _foreign_json(i: int, **extra: object) -> bytes:
    return json.dumps(
        {"url": f"https://example.com/v{i}.mp4", "key": f"{i:09d}", "status": "success", **extra}
    ).encode()


@pytest.fixture
def third_party_shards(tmp_path: Path) -> Path:
    """video2dataset-style shards: ``.mp4`` with ``.txt`` and/or a foreign ``.json``, no clip metadata."""
    root = tmp_path / "v2d"
    root.mkdir()
    landscape = clip_frames(0, num_frames=12, height=24, width=32)  # 12 fps
    fast = clip_frames(1, num_frames=12, height=24, width=32)  # 24 fps
    portrait = clip_frames(2, num_frames=12, height=32, width=24)
    _write_tar(
        root / "00000.tar",
        [
            ("000000000.mp4", encode_mp4(landscape, 12.0)),
            ("000000000.txt", "a fox runs 🦊\n".encode()),
            ("000000000.json", _foreign_json(0, caption="the json's caption loses to the txt")),
            ("000000001.mp4", encode_mp4(fast, 24.0)),
            ("000000001.json", _foreign_json(1, caption="caption from json")),
        ],
    )
    _write_tar(
        root / "00001.tar",
        [
            ("000010000.mp4", encode_mp4(portrait, 12.0)),
            ("000010000.txt", b"txt only"),
            ("000010001.mkv", _encode("matroska", landscape, 12)),
            ("000010001.json", _foreign_json(3, text="caption under text")),
        ],
    )
    return root


def test_third_party_shards_are_probed_and_captioned_from_txt_or_json(third_party_shards: Path) -> None:
    cfg = DataConfig(
        path=str(third_party_shards), num_frames=3, fps=6.0, height=12, width=16, shuffle=False, num_workers=0
    )
    loader = ShardLoader(cfg, batch_size=4, seed=0)
    assert loader.kind == "raw" and loader.steps_per_epoch == 1
    batch = next(iter(loader))
    assert batch["key"] == ["000000000", "000000001", "000010000", "000010001"]
    assert batch["caption"] == ["a fox runs 🦊", "caption from json", "txt only", "caption under text"]
    assert batch["video"].shape == (4, 3, 3, 12, 16)
    # At 6 fps: source frames 0, 2, 4 of the 12 fps clips and 0, 4, 8 of the 24 fps one (grey 10 i + 15 t).
    levels = (batch["video"].mean(dim=(1, 3, 4)) + 1) * 127.5  # (B, T)
    want = torch.tensor([[0.0, 30.0, 60.0], [10.0, 70.0, 130.0], [20.0, 50.0, 80.0], [0.0, 30.0, 60.0]])
    assert (levels - want).abs().max() < 3.0

    refs = [ref for shard in list_shards(third_party_shards) for ref in index_shard(shard)]
    meta = clip_meta(refs[1])
    assert meta["url"] == "https://example.com/v1.mp4"  # the foreign keys are kept
    assert {k: meta[k] for k in ("num_frames", "fps", "width", "height")} == {
        "num_frames": 12, "fps": 24.0, "width": 32, "height": 24,
    }  # fmt: skip
    # Buckets read the probed size: the portrait clip goes to the portrait bucket.
    buckets = ShardLoader(DataConfig(path=cfg.path, buckets=["12x16", "16x12"], num_workers=0), batch_size=1)
    assert buckets.bucket == [0, 0, 1, 0]


def test_probe_counts_frames_when_the_container_does_not_say() -> None:
    frames = clip_frames(0, num_frames=5, height=24, width=32)
    mkv = _encode("matroska", frames, 12)
    assert probe_video_bytes(mkv) == VideoMeta(num_frames=5, fps=12.0, width=32, height=24)
    assert probe_video_bytes(encode_mp4(frames, 24.0)) == VideoMeta(
        num_frames=5, fps=24.0, width=32, height=24
    )


def test_unusable_third_party_samples_are_errors_naming_shard_key_and_remedy(tmp_path: Path) -> None:
    short = encode_mp4(clip_frames(0, num_frames=3, height=24, width=32), 12.0)
    empty_avi = _encode("avi", np.zeros((0, 24, 32, 3), np.uint8), 12, codec="mjpeg", pix_fmt="yuvj420p")
    shard = _write_tar(
        tmp_path / "bad.tar",
        [
            ("novideo.txt", b"a caption without its video"),
            ("novideo.json", _foreign_json(0)),
            ("garbage.mp4", b"\x00not a video" * 10),
            ("garbage.txt", b"x"),
            ("empty.avi", empty_avi),
            ("zero.mp4", short),
            ("zero.json", json.dumps({"num_frames": 0, "fps": 12.0}).encode()),
            ("short.mp4", short),
            ("short.txt", b"too short"),
            ("latin1.mp4", short),
            ("latin1.txt", "café".encode("latin-1")),
        ],
    )
    refs = {ref.key: ref for ref in index_shard(shard)}
    cfg = DataConfig(path=str(shard), num_frames=4, fps=6.0, height=8, width=8)
    expected = {
        "novideo": (ValueError, r"bad\.tar: sample 'novideo' holds no video member .*remove the sample"),
        "garbage": (VideoError, r"bad\.tar:garbage\.mp4: not a decodable video .*remove the sample"),
        "empty": (VideoError, r"bad\.tar:empty\.avi: the video holds no frames; re-encode it or remove"),
        "zero": (ValueError, r"bad\.tar: zero\.json says num_frames=0.*remove the sample"),
        # 4 frames at 6 fps span source frames 0..6 of a 12 fps clip: 7 frames, the clip has 3.
        "short": (ValueError, r"bad\.tar:short\.mp4: 3 frames at 12 fps .* too short .*spans 7 frames.*"
                  r"lower data\.num_frames or data\.fps, or remove the sample"),
    }  # fmt: skip
    for key, (error, message) in expected.items():
        with pytest.raises(error, match=message):
            load_raw_sample(refs[key], cfg)
    with pytest.raises(ValueError, match=r"bad\.tar: latin1\.txt is not UTF-8"):
        load_raw_sample(
            refs["latin1"], DataConfig(path=str(shard), num_frames=2, fps=12.0, height=8, width=8)
        )
    # A training clip the short sample spans loads.
    fits = DataConfig(num_frames=3, fps=12.0, height=8, width=8)
    assert load_raw_sample(refs["short"], fits)["caption"] == "too short"


def test_vdiff_shards_keep_their_json_metadata_and_pad_short_clips(clip_shards: Path) -> None:
    ref = index_shard(list_shards(clip_shards)[0])[0]
    # 8 frames at 6 fps span 15 source frames; the curated clip has 12 and its last one repeats.
    sample = load_raw_sample(ref, DataConfig(num_frames=8, fps=6.0, height=8, width=8))
    levels = (sample["video"].mean(dim=(0, 2, 3)) + 1) * 127.5  # (T,)
    assert (levels[-2:] - 165.0).abs().max() < 3.0 and sample["caption"] == "clip 0"
