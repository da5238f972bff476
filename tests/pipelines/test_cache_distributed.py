"""`vdiff cache` on 2 gloo ranks: each takes its share of the shards; the output is the one-process one.

The ranks are forked with the environment torchrun gives them (as in test_train_distributed.py);
`test_torchrun_command_line` (slow) runs the documented ``torchrun ... -m pipelines.cache`` itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import webdataset as wds

from data_prep.synthetic import moving_shapes, shape_caption
from pipelines.cache import main
from vdiff.io.outdir import marker_path
from vdiff.io.video import encode_mp4
from vdiff.parallel.shares import gather_strings, rank_share

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny.yaml"
SIZES = ["data.num_frames=4", "data.height=16", "data.width=16", "text.max_length=8", "batch_size=2"]
THREADS = 1
"""torch threads in every process, the one-process reference included"""


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 captioned moving-shape clips in 3 shards (2, 2, 1 clips): 2 ranks take 2 and 1 shards."""
    root = tmp_path_factory.mktemp("raw")
    (root / "shards").mkdir()
    specs = [("red", "circle", "left"), ("blue", "square", "right"), ("green", "triangle", "up"),
             ("white", "circle", "down"), ("yellow", "square", "left")]  # fmt: skip
    for s, clips in enumerate([(0, 1), (2, 3), (4,)]):
        with wds.TarWriter(str(root / "shards" / f"shard-{s:06d}.tar")) as w:
            for i in clips:
                frames = moving_shapes(*specs[i], num_frames=6, height=20, width=24, fps=8.0, seed=i)
                meta = {"caption": shape_caption(*specs[i]), "fps": 8.0, "num_frames": 6, "width": 24,
                        "height": 20}  # fmt: skip
                w.write({"__key__": f"clip-{i}", "mp4": encode_mp4(frames, 8.0), "json": json.dumps(meta)})
    return root


def args(raw: Path, out: Path, *extra: str) -> list[str]:
    return [str(raw), "--out", str(out), "--config", str(CONFIG), *SIZES, *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, argv: list[str], codes: Path) -> None:
    # NOTE: the environment torchrun gives each process.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ.update(WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(THREADS)
    (codes / f"rank{rank}").write_text(str(main(argv)))


def launch(world_size: int, argv: list[str], tmp: Path) -> list[int]:
    """Each rank's exit code of ``pipelines.cache.main(argv)`` on ``world_size`` forked processes."""
    codes = tmp / f"codes-{free_port()}"
    codes.mkdir()
    mp.start_processes(
        _worker, args=(world_size, free_port(), argv, codes), nprocs=world_size, start_method="fork"
    )
    return [int((codes / f"rank{r}").read_text()) for r in range(world_size)]


def files(out: Path, data: Path | None = None) -> dict[str, bytes]:
    """Every file of a cache folder but its marker and lock: relative path -> bytes.

    NOTE: cache_config.yaml records DATA and --out, which differ between the runs compared: they
    read as DATA and OUT.
    """
    skip = {marker_path(out, "cache").name, ".vdiff.lock"}
    paths = [p for p in sorted(out.rglob("*")) if p.is_file() and p.name not in skip]
    named = [(str(out), b"OUT"), *([(str(data), b"DATA")] if data is not None else [])]

    def read(p: Path) -> bytes:
        raw = p.read_bytes()
        for path, name in named:
            raw = raw.replace(path.encode(), name)
        return raw

    return {str(p.relative_to(out)): read(p) for p in paths}


@pytest.fixture(scope="module")
def reference(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "cache"
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        assert main(args(raw, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def sha256s(out: Path) -> list[str]:
    marker = json.loads(marker_path(out, "cache").read_text())
    assert marker["complete"] is True
    return [e["sha256"] for e in marker["inputs"]]


def test_rank_share_deals_every_item_to_one_rank() -> None:
    items = list(range(7))
    shares = [rank_share(items, rank=r, world_size=3) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert rank_share([], rank=0, world_size=2) == [] and rank_share([5], rank=1, world_size=2) == []
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        rank_share(items, rank=2, world_size=2)
    assert gather_strings({1: "ab"}, n=3, width=4) == [None, "ab", None]


@pytest.mark.dist
def test_two_ranks_write_the_one_process_cache(raw: Path, reference: Path, tmp_path: Path, capfd) -> None:
    out = tmp_path / "cache"
    assert launch(2, args(raw, out), tmp_path) == [0, 0]
    want = files(reference)
    assert sorted(k for k in want if k.startswith("shards/")) == [
        f"shards/shard-00000{i}.tar" for i in range(3)
    ]
    assert files(out) == want  # byte for byte: shards, empty prompt, settings, config
    assert b"DATA" not in want["cache_config.yaml"] and b"OUT" in want["cache_config.yaml"]
    assert sha256s(out) == sha256s(reference) and all(len(h) == 64 for h in sha256s(out))
    printed = capfd.readouterr().out
    assert "[1/2 of rank 0]" in printed and "[1/1 of rank 1]" in printed  # shards 0, 2 and shard 1

    # Resume on 2 ranks: finished shards are kept as they are, the missing one and a temp are redone.
    gone = out / "shards" / "shard-000001.tar"
    gone.unlink()
    (gone.parent / ".shard-000001.tar.x.tmp").write_bytes(b"partial")  # left by a killed run
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    assert launch(2, args(raw, out), tmp_path) == [0, 0]
    assert files(out) == want
    assert {
        p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar") if p.name in stamps
    } == stamps
    assert "[1/1 of rank 0]" in capfd.readouterr().out  # one shard left: rank 0's, rank 1 had none


@pytest.mark.dist
def test_rank_0_refusing_the_out_folder_stops_every_rank(raw: Path, tmp_path: Path, capfd) -> None:
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "notes.txt").write_text("not a cache")
    assert launch(2, args(raw, out), tmp_path) == [2, 1]
    err = capfd.readouterr().err
    assert "--overwrite" in err and "rank 0 failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.dist
def test_a_rank_failing_on_its_shard_stops_both_and_a_rerun_finishes(
    raw: Path, reference: Path, tmp_path: Path, capfd
) -> None:
    data, out = tmp_path / "raw", tmp_path / "cache"
    shutil.copytree(raw, data)
    bad = data / "shards" / "shard-000001.tar"  # rank 1's shard
    bad.write_bytes(b"not a tar file")
    assert launch(2, args(data, out), tmp_path) == [1, 2]
    err = capfd.readouterr().err
    assert "shard-000001.tar" in err and "rank 1 failed" in err
    assert json.loads(marker_path(out, "cache").read_text()).get("complete") is not True
    assert not (out / "shards" / "shard-000001.tar").exists()

    shutil.copy(raw / "shards" / bad.name, bad)  # the source fixed (a new mtime): --replace re-caches it
    assert launch(2, [*args(data, out), "--replace"], tmp_path) == [0, 0]
    assert files(out, data) == files(reference, raw) and sha256s(out) == sha256s(reference)


@pytest.mark.dist
@pytest.mark.slow
def test_torchrun_command_line(raw: Path, reference: Path, tmp_path: Path) -> None:
    """The documented launch: ``torchrun --nproc_per_node=2 -m pipelines.cache DATA --out DIR ...``."""
    out = tmp_path / "cache"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONPATH": str(ROOT)}
    cmd = [*torchrun, "-m", "pipelines.cache", *args(raw, out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert files(out) == files(reference)
