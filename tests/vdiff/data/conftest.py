"""Tiny WebDataset shards of synthetic clips, written with webdataset.TarWriter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from vdiff.io.video import encode_mp4


def clip_frames(i: int, *, num_frames: int, height: int, width: int) -> np.ndarray:
    """Frame t of clip i is a flat grey of level 10·i + 15·t (at most 255): frames are identifiable."""
    levels = 10 * i + 15 * np.arange(num_frames)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).astype(np.uint8)


@pytest.fixture
def clip_shards(tmp_path: Path) -> Path:
    """10 clips (12 frames at 12 fps, 24x32) in 3 shards under ``tmp_path/data/shards``."""
    root = tmp_path / "data"
    (root / "shards").mkdir(parents=True)
    for s, ids in enumerate([range(0, 4), range(4, 8), range(8, 10)]):
        with wds.TarWriter(str(root / "shards" / f"shard-{s:06d}.tar")) as w:
            for i in ids:
                frames = clip_frames(i, num_frames=12, height=24, width=32)
                meta = {"caption": f"clip {i}", "fps": 12.0, "num_frames": 12, "width": 32, "height": 24}
                w.write(
                    {"__key__": f"clip-{i:03d}", "mp4": encode_mp4(frames, 12.0), "json": json.dumps(meta)}
                )
    return root


@pytest.fixture
def mixed_shards(tmp_path: Path) -> Path:
    """9 clips in one shard: 4 landscape (24x32), 3 portrait (32x24) and 2 square (24x24)."""
    root = tmp_path / "mixed"
    root.mkdir()
    sizes = [(24, 32)] * 4 + [(32, 24)] * 3 + [(24, 24)] * 2
    with wds.TarWriter(str(root / "shard-000000.tar")) as w:
        for i, (h, wd) in enumerate(sizes):
            meta = {"caption": f"clip {i}", "fps": 12.0, "num_frames": 6, "width": wd, "height": h}
            mp4 = encode_mp4(clip_frames(i, num_frames=6, height=h, width=wd), 12.0)
            w.write({"__key__": f"clip-{i:03d}", "mp4": mp4, "json": json.dumps(meta)})
    return root
