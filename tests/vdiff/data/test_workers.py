"""ShardLoader with worker processes: the in-process batches, exact resume, errors, no leaked workers."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import webdataset as wds

from vdiff.data import DataConfig, ShardLoader
from vdiff.io.video import VideoError, encode_mp4


def bucketed(root: Path, workers: int) -> DataConfig:
    """Three aspect-ratio buckets and random clip starts (mixed_shards: 4 steps of 2 per epoch)."""
    return DataConfig(
        path=str(root),
        num_frames=2,
        fps=12.0,
        buckets=["12x16", "16x12", "16x16"],
        random_offset=True,
        num_workers=workers,
    )


def take(loader: ShardLoader, n: int) -> list[dict]:
    return list(itertools.islice(iter(loader), n))


def assert_same_batches(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a["key"] == b["key"] and a["caption"] == b["caption"]
        assert torch.equal(a["video"], b["video"])  # bit-identical, not close


def workers_of(before: set[int]) -> set[int]:
    """Live child processes started since ``before`` (pids)."""
    return {p.pid for p in multiprocessing.active_children()} - before


def test_workers_give_the_in_process_batches_over_epochs_and_buckets(mixed_shards: Path) -> None:
    want = take(ShardLoader(bucketed(mixed_shards, 0), batch_size=2, seed=5), 10)  # 2.5 epochs
    rng = torch.get_rng_state()
    with ShardLoader(bucketed(mixed_shards, 2), batch_size=2, seed=5) as loader:
        assert loader.uses_workers
        assert_same_batches(take(loader, 10), want)
    # NOTE: training draws its noise from the global RNG; reading ahead must not move it.
    assert torch.equal(torch.get_rng_state(), rng)
    assert {tuple(b["video"].shape[-2:]) for b in want} == {(12, 16), (16, 12), (16, 16)}
    # each rank's workers read that rank's half of every global batch
    for rank in range(2):
        with ShardLoader(bucketed(mixed_shards, 2), batch_size=1, rank=rank, world=2, seed=5) as r:
            halves = take(r, 10)
        assert [h["key"] for h in halves] == [b["key"][rank : rank + 1] for b in want]
        assert all(torch.equal(h["video"][0], b["video"][rank]) for h, b in zip(halves, want))


def test_state_saved_while_workers_read_ahead_resumes_with_the_next_batch(clip_shards: Path) -> None:
    cfg = DataConfig(
        path=str(clip_shards), num_frames=4, fps=12.0, height=8, width=8, random_offset=True, num_workers=2
    )
    a = ShardLoader(cfg, batch_size=3, seed=1)  # 3 steps per epoch
    it = iter(a)
    for _ in range(4):
        next(it)
    state = a.state_dict()  # the workers have read batches 5.. ahead by now; they do not count
    assert state == {"epoch": 1, "step_in_epoch": 1}
    rest = [next(it) for _ in range(3)]
    b = ShardLoader(cfg, batch_size=3, seed=1)
    b.load_state_dict(state)
    assert_same_batches(take(b, 3), rest)
    b.close()
    in_process = ShardLoader(DataConfig(**{**cfg.__dict__, "num_workers": 0}), batch_size=3, seed=1)
    in_process.load_state_dict(state)
    assert_same_batches(take(in_process, 3), rest)
    # rewinding a loader whose workers are ahead restarts them at the restored position
    a.load_state_dict(state)
    assert_same_batches([next(it) for _ in range(3)], rest)
    assert a.state_dict() == {"epoch": 2, "step_in_epoch": 1}
    a.close()


def test_a_corrupt_clip_in_a_worker_raises_the_same_error(tmp_path: Path) -> None:
    with wds.TarWriter(str(tmp_path / "bad.tar")) as w:
        meta = json.dumps({"caption": "x", "fps": 8.0, "num_frames": 4, "width": 8, "height": 8})
        grey = np.full((4, 8, 8, 3), 128, dtype=np.uint8)  # (T, H, W, 3)
        w.write({"__key__": "good", "mp4": encode_mp4(grey, 8.0), "json": meta})
        w.write({"__key__": "broken", "mp4": b"\x00not a video" * 10, "json": meta})
    errors = []
    for workers in (0, 2):
        cfg = DataConfig(path=str(tmp_path / "bad.tar"), num_frames=2, height=8, width=8, shuffle=False)
        cfg.num_workers, cfg.on_error = workers, "raise"
        with ShardLoader(cfg, batch_size=1) as loader:
            it = iter(loader)
            assert next(it)["key"] == ["good"]
            with pytest.raises(VideoError, match=r"bad\.tar:broken\.mp4") as err:
                next(it)
            assert loader.state_dict() == {"epoch": 0, "step_in_epoch": 1}  # the bad batch is not consumed
            errors.append(err.value)
    assert type(errors[1]) is VideoError and str(errors[1]) == str(errors[0])
    assert "data-loader worker" in "".join(getattr(errors[1], "__notes__", []))


def test_workers_stop_on_close_and_when_the_loader_is_dropped(clip_shards: Path) -> None:
    cfg = DataConfig(path=str(clip_shards), num_frames=2, fps=12.0, height=8, width=8, num_workers=2)
    before = {p.pid for p in multiprocessing.active_children()}
    loader = ShardLoader(cfg, batch_size=2)
    take(loader, 2)
    assert len(workers_of(before)) == 2
    loader.close()
    assert not workers_of(before)
    take(loader, 1)  # a closed loader starts new workers where it stopped
    assert loader.state_dict() == {"epoch": 0, "step_in_epoch": 3} and len(workers_of(before)) == 2
    del loader  # NOTE: no reference cycle holds the workers: they stop without gc.collect()
    assert not workers_of(before)

    def train_that_fails() -> None:
        with ShardLoader(cfg, batch_size=2) as loader:
            for step, _ in enumerate(loader):
                if step == 2:
                    raise RuntimeError("training failed")

    with pytest.raises(RuntimeError, match="training failed"):
        train_that_fails()
    assert not workers_of(before)


def _rank_keys(rank: int, world: int, port: int, cfg: DataConfig, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with ShardLoader(cfg, batch_size=2, rank=rank, world=world, seed=3) as loader:
            torch.save([b["key"] for b in take(loader, 6)], os.path.join(out, f"{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_each_torchrun_rank_reads_its_slice_with_its_own_workers(clip_shards: Path) -> None:
    cfg = DataConfig(path=str(clip_shards), num_frames=2, fps=12.0, height=8, width=8, num_workers=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_rank_keys, args=(2, port, cfg, out), nprocs=2, start_method="fork")
        ranks = [torch.load(os.path.join(out, f"{r}.pt"), weights_only=True) for r in range(2)]
    cfg.num_workers = 0
    one = [b["key"] for b in take(ShardLoader(cfg, batch_size=4, seed=3), 6)]
    assert [a + b for a, b in zip(*ranks)] == one


def test_a_negative_worker_count_is_a_clear_error(clip_shards: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.num_workers must be >= 0"):
        ShardLoader(DataConfig(path=str(clip_shards), num_workers=-1), batch_size=2)
