"""WebDataset tar shards read by random access: an index of members, then seek + read.

A WebDataset sample is the group of tar members that share a key: the member name up to the
first dot of its base name (``clip-001.mp4`` and ``clip-001.json`` form sample ``clip-001``
with extensions ``mp4`` and ``json``). Reading the tar headers once gives every member's byte
offset, so any sample can later be read with one seek, in any order, without extracting
anything to disk.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's members lie: shard file, key, and ``{ext: (offset, size)}``."""

    shard: Path
    key: str
    members: dict[str, tuple[int, int]]


def list_shards(path: str | Path) -> list[Path]:
    """Shard files of a dataset: a ``.tar`` file, a folder of them, or a folder with ``shards/``."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(
            f"data path {path} does not exist; point data.path at a folder of .tar shards"
        )
    folder = path / "shards" if (path / "shards").is_dir() else path
    shards = sorted(p for p in folder.glob("*.tar") if not p.name.startswith("."))
    if not shards:
        raise FileNotFoundError(f"no .tar shards in {folder}; run `vdiff curate` (or `vdiff cache`) first")
    return shards


def split_member_name(name: str) -> tuple[str, str]:
    """``"dir/clip.001.mp4"`` -> ``("dir/clip", "001.mp4")``: key and extension, WebDataset-style."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot:
        return name, ""
    return (f"{head}/{stem}" if head else stem), ext.lower()


def index_shard(shard: str | Path) -> list[SampleRef]:
    """Samples of one shard in tar order (headers only; member data is not read)."""
    shard = Path(shard)
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, ext = split_member_name(m.name)
                samples.setdefault(key, {})[ext] = (m.offset_data, m.size)
    except tarfile.TarError as e:
        raise ValueError(f"{shard}: not a readable uncompressed tar shard ({e})") from e
    return [SampleRef(shard=shard, key=k, members=v) for k, v in samples.items()]


def read_sample(ref: SampleRef, exts: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """The bytes of a sample's members (all, or only ``exts``)."""
    out = {}
    with open(ref.shard, "rb") as f:
        for ext, (offset, size) in ref.members.items():
            if exts is not None and ext not in exts:
                continue
            f.seek(offset)
            data = f.read(size)
            if len(data) != size:
                raise ValueError(f"{ref.shard}: member {ref.key}.{ext} is truncated")
            out[ext] = data
    return out
