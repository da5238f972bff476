"""``manifest.parquet``: one row per candidate clip, kept or not, with why."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vdiff.io.files import atomic_write_bytes

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),  # <source sha256[:16]>_<start>_<end>
        pa.field("source", pa.string(), nullable=False),  # the input path as given
        pa.field("source_sha256", pa.string(), nullable=False),
        pa.field("scene_start", pa.int64(), nullable=False),  # source frames, end exclusive
        pa.field("scene_end", pa.int64(), nullable=False),
        pa.field("start_frame", pa.int64(), nullable=False),
        pa.field("end_frame", pa.int64(), nullable=False),
        pa.field("source_fps", pa.float64(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),  # of the output clip
        pa.field("num_frames", pa.int64(), nullable=False),  # of the output clip
        pa.field("width", pa.int64(), nullable=False),  # of the output clip
        pa.field("height", pa.int64(), nullable=False),
        pa.field("duration", pa.float64(), nullable=False),  # seconds
        pa.field("motion", pa.float64(), nullable=True),  # null for too_short candidates
        pa.field("status", pa.string(), nullable=False),  # "kept" or the reason it was dropped
        pa.field("duplicate_of", pa.string(), nullable=True),
        pa.field("caption", pa.string(), nullable=True),
        pa.field("shard", pa.string(), nullable=True),  # null unless kept
    ]
)
"""Columns of ``manifest.parquet``."""


def manifest_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """A table with :data:`MANIFEST_SCHEMA` from row dicts (extra keys are ignored)."""
    cols = {f.name: [r.get(f.name) for r in rows] for f in MANIFEST_SCHEMA}
    return pa.table(cols, schema=MANIFEST_SCHEMA)


def write_manifest(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write ``rows`` to ``path`` as parquet, atomically."""
    buf = io.BytesIO()
    pq.write_table(manifest_table(rows), buf)
    atomic_write_bytes(path, buf.getvalue())


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The manifest's rows as dicts, in file order."""
    return pq.read_table(path).to_pylist()
