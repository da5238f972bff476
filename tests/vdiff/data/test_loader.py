"""Shard indexing, clip decoding and the per-rank deterministic loader."""

from __future__ import annotations

import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from vdiff.data import (
    DataConfig,
    ShardLoader,
    clip_frame_indices,
    index_shard,
    list_shards,
    read_sample,
    resize_crop,
    split_member_name,
)
from vdiff.io.video import VideoError


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
    cfg = DataConfig(path=str(tmp_path / "bad.tar"), num_frames=2, height=8, width=8)
    loader = ShardLoader(cfg, batch_size=1)
    with pytest.raises(VideoError, match=r"bad\.tar:broken\.mp4"):
        next(iter(loader))
