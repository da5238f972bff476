"""Training data: WebDataset shard indexing, clip decoding, and per-rank deterministic loaders."""

from vdiff.data.clips import (
    clip_frame_indices,
    decode_mp4_frames,
    frames_to_video,
    probe_video_bytes,
    resize_crop,
)
from vdiff.data.loader import (
    BatchPlan,
    DataConfig,
    DataError,
    SampleReader,
    cached_settings,
    clip_meta,
    collate,
    detect_kind,
    load_cached_sample,
    load_empty_prompt,
    load_raw_sample,
)
from vdiff.data.shard_loader import ShardLoader
from vdiff.data.shards import SampleRef, index_shard, list_shards, read_sample, split_member_name

__all__ = [
    "BatchPlan",
    "DataConfig",
    "DataError",
    "SampleReader",
    "SampleRef",
    "ShardLoader",
    "cached_settings",
    "clip_frame_indices",
    "clip_meta",
    "collate",
    "decode_mp4_frames",
    "detect_kind",
    "frames_to_video",
    "index_shard",
    "list_shards",
    "load_cached_sample",
    "load_empty_prompt",
    "load_raw_sample",
    "probe_video_bytes",
    "read_sample",
    "resize_crop",
    "split_member_name",
]
