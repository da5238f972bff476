"""The frame-numbering contract of issue 12, checked on a media zoo built at test time.

ffmpeg's own decode (presentation order, display matrix applied, every frame) is the truth for
frame numbers and orientation. Every zoo file (tests/data_prep/zoo.py) holds the same barcoded
source with known hard cuts; for each one, vdiff's analysis decode, scene cuts, clip spans,
encoded clip frames and manifest must all use ffmpeg's numbering, and a file vdiff cannot number
that way is an error with a reason in report.json.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from data_prep.decode import DecodeConfig, analysis_size, decode_for_analysis
from data_prep.manifest import read_manifest
from data_prep.shards import read_shard
from pipelines import curate


def _load_zoo() -> ModuleType:
    # NOTE: --import-mode=importlib puts no test folder on sys.path; load the helpers by path.
    spec = importlib.util.spec_from_file_location("vdiff_tests_zoo", Path(__file__).with_name("zoo.py"))
    assert spec is not None and spec.loader is not None
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    if not hasattr(module, "build_zoo"):
        spec.loader.exec_module(module)
    return module


zoo = _load_zoo()

NAMES = ("h264_bframes", "h264_ts_offset", "mpeg2_ps", "vp9_webm", "av1_mkv", "rot90", "rot270", "vfr")
"""every zoo file build_zoo can write (av1_mkv only when ffmpeg has libsvtav1)"""
CURATE_OVERRIDES = [
    "caption.method=none",
    "clips.min_seconds=0.5",  # NOTE: the shortest trimmed scene is 23 frames
    "dedup.enabled=false",  # NOTE: every zoo file holds the same content
    "quality.min_width=128",  # NOTE: the rotated files are 192 pixels wide
    "quality.min_height=128",
    "output.threads=1",
]


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def zoo_files(zoo_dir: Path) -> dict[str, Any]:
    """name -> zoo.ZooFile, built once per session."""
    return {f.name: f for f in zoo.build_zoo(zoo_dir / "files")}


@pytest.fixture(scope="session")
def odd_rotation(zoo_dir: Path) -> Path:
    return zoo.build_odd_rotation(zoo_dir)


@pytest.fixture(scope="session")
def truths(zoo_files: dict[str, Any]) -> dict[str, Any]:
    """name -> zoo.Truth: ffmpeg's numbering of each zoo file."""
    return {name: zoo.read_truth(f.path) for name, f in zoo_files.items()}


@pytest.fixture
def case(request, zoo_files, truths) -> tuple[Any, Any]:
    """(zoo.ZooFile, zoo.Truth) of the parametrized zoo file."""
    name = request.param
    if name not in zoo_files:
        pytest.skip(f"{name}: the local ffmpeg cannot encode it")
    return zoo_files[name], truths[name]


@pytest.fixture(scope="session")
def curated(zoo_files, odd_rotation, zoo_dir) -> dict[str, Any]:
    """One `vdiff curate` run over the whole zoo and the odd-rotation file; its outputs by file name."""
    out = zoo_dir / "curated"
    inputs = [str(f.path) for f in zoo_files.values()] + [str(odd_rotation)]
    args = [*inputs, "--out", str(out), "--workers", "2", "--no-progress", *CURATE_OVERRIDES]
    assert curate.main(args) == 0
    report = json.loads((out / "report.json").read_text())
    mp4s = {
        name.removesuffix(".mp4"): data
        for shard in sorted((out / "shards").glob("*.tar"))
        for name, data in read_shard(shard)
        if name.endswith(".mp4")
    }
    rows = read_manifest(out / "manifest.parquet")
    return {
        "inputs": {Path(e["path"]).name: e for e in report["inputs"]},
        "rows": {
            p: [r for r in rows if Path(r["source"]).name == p]
            for p in {Path(r["source"]).name for r in rows}
        },
        "mp4s": mp4s,
    }


def _by_file(curated: dict[str, Any], f: Any) -> tuple[dict, list[dict]]:
    """(report.json input entry, manifest rows) of zoo file ``f``."""
    return curated["inputs"][f.path.name], curated["rows"].get(f.path.name, [])


def describe_codes(got: np.ndarray, want: np.ndarray, frames: np.ndarray, size: tuple[int, int]) -> str:
    """How the source indices ``got`` (T,) of ``frames`` (T, H, W, 3) differ from ffmpeg's ``want``
    (T',) at display ``size``."""
    parts = [f"{len(got)} frames (ffmpeg: {len(want)})"]
    if (got < 0).any():
        how = zoo.misorientation(frames[int(np.argmax(got < 0))], size) or "unreadable"
        parts.append(f"{int((got < 0).sum())} frames not upright (first: {how})")
    n = min(len(got), len(want))
    bad = np.flatnonzero((got[:n] != want[:n]) & (got[:n] >= 0))
    if len(bad):
        offsets, counts = np.unique((got[:n] - want[:n])[bad], return_counts=True)
        common = ", ".join(f"{o:+d} x{c}" for o, c in sorted(zip(offsets, counts), key=lambda x: -x[1])[:4])
        parts.append(f"{len(bad)} frames are other source frames, from frame {bad[0]} on; offsets {common}")
        parts.append(
            f"got {got[bad[0] : bad[0] + 5].tolist()}... want {want[bad[0] : bad[0] + 5].tolist()}..."
        )
    readable = got[got >= 0]
    repeats = int((np.diff(readable) == 0).sum()) if len(readable) > 1 else 0
    if repeats:
        last = int((readable == readable[-1]).sum())
        parts.append(f"{repeats} repeated frames (last: source frame {readable[-1]} x{last})")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- the zoo itself


@pytest.mark.parametrize("case", NAMES, indirect=True)
def test_zoo_file_is_what_it_claims(case):
    f, truth = case
    assert truth.codes.tolist() == list(range(zoo.num_source_frames())), "ffmpeg must see every frame once"
    assert truth.cuts == zoo.source_cuts()
    stream, container = truth.probe["streams"][0], truth.probe["format"]
    if f.name == "h264_bframes":
        assert stream["has_b_frames"] > 0 and b"elst" in f.path.read_bytes()
    if f.name == "h264_ts_offset":
        assert container["format_name"] == "mpegts" and float(container["start_time"]) >= 10
    if f.name == "mpeg2_ps":
        assert container["format_name"] == "mpeg" and stream["codec_name"] == "mpeg2video"
        assert float(container["start_time"]) > 0
    if f.rotation:
        # NOTE: ffprobe reports the counterclockwise angle: -90 for rotate=90, 90 for rotate=270.
        assert zoo.display_rotation(truth.probe) == pytest.approx((180 - f.rotation) % 360 - 180)
        assert truth.size == (zoo.SIZE[1], zoo.SIZE[0])  # NOTE: ffmpeg's autorotate swapped w and h
    if f.name == "vfr":
        assert stream["r_frame_rate"] == "30/1" and stream["avg_frame_rate"] != "30/1"


# ----------------------------------------------------------------------------- analysis decode


@pytest.mark.parametrize("case", NAMES, indirect=True)
def test_analysis_decode_numbers_and_orients_frames_like_ffmpeg(case):
    f, truth = case
    video = decode_for_analysis(f.path, DecodeConfig())
    h, w = video.frames.shape[1:3]
    codes = zoo.read_barcodes(video.frames)  # (T,)
    problems = []
    if (video.meta.width, video.meta.height) != truth.size:
        problems.append(f"meta size {video.meta.width}x{video.meta.height}, display size {truth.size}")
    if (w, h) != analysis_size(*truth.size, DecodeConfig().short_side):
        problems.append(f"analysis frames {w}x{h}, want the display aspect {truth.size}")
    if video.meta.num_frames != len(truth.codes):
        problems.append(f"meta.num_frames {video.meta.num_frames}, ffmpeg decodes {len(truth.codes)}")
    if codes.tolist() != truth.codes.tolist():
        problems.append(describe_codes(codes, truth.codes, video.frames, truth.size))
    assert not problems, f"{f.name} ({f.what}): " + " | ".join(problems)


# ----------------------------------------------------------------------------- vdiff curate


@pytest.mark.parametrize("case", NAMES, indirect=True)
def test_curate_keeps_clips_of_every_zoo_file(case, curated):
    f, truth = case
    entry, rows = _by_file(curated, f)
    assert entry["status"] == "ok", f"{f.name}: {entry['reason']}"
    kept = [r for r in rows if r["status"] == "kept"]
    assert len(kept) == len(truth.cuts) + 1, [(r["start_frame"], r["end_frame"], r["status"]) for r in rows]


@pytest.mark.parametrize("case", NAMES, indirect=True)
def test_curate_scene_cuts_are_ffmpegs_within_one_frame(case, curated):
    f, truth = case
    _, rows = _by_file(curated, f)
    found = sorted({r["scene_start"] for r in rows if r["scene_start"] > 0})
    missed = [c for c in truth.cuts if not any(abs(c - x) <= 1 for x in found)]
    extra = [x for x in found if not any(abs(c - x) <= 1 for c in truth.cuts)]
    assert not missed and not extra, f"{f.name}: cuts {found}, ffmpeg's {truth.cuts}"


@pytest.mark.parametrize("case", NAMES, indirect=True)
def test_curate_kept_clips_do_not_straddle_a_cut(case, curated):
    f, truth = case
    _, rows = _by_file(curated, f)
    spans = [(r["start_frame"], r["end_frame"]) for r in rows if r["status"] == "kept"]
    # NOTE: end is exclusive: a clip straddles cut c when it holds frames c - 1 and c.
    straddling = [(s, e, c) for s, e in spans for c in truth.cuts if s < c <= e - 1]
    assert not straddling, f"{f.name}: (start, end, cut) {straddling}"


@pytest.mark.parametrize("case", NAMES, indirect=True)
def test_curate_clip_frames_are_ffmpegs_frames_start_to_end(case, curated):
    f, truth = case
    _, rows = _by_file(curated, f)
    problems = []
    for r in (r for r in rows if r["status"] == "kept"):
        start, end = r["start_frame"], r["end_frame"]
        frames, _ = zoo.decode_clip(curated["mp4s"][r["clip_id"]])  # (T, H, W, 3)
        codes = zoo.read_barcodes(frames)  # (T,)
        want = truth.codes[start:end]
        if codes.tolist() != want.tolist():
            why = describe_codes(codes, want, frames, truth.size)
            problems.append(f"[{start}, {end}): first/last {codes[0]}/{codes[-1]}, {why}")
        else:
            diff = zoo.mean_abs_diff(zoo.thumbnail(frames[0], truth.size), truth.thumbs[start])
            if diff > 12:
                problems.append(
                    f"[{start}, {end}): first frame differs from ffmpeg's by {diff:.1f} grey levels"
                )
    assert not problems, f"{f.name} ({f.what}): " + " | ".join(problems)


@pytest.mark.parametrize("case", NAMES, indirect=True)
def test_curate_clips_are_upright_in_the_display_aspect(case, curated):
    f, truth = case
    _, rows = _by_file(curated, f)
    problems = []
    for r in (r for r in rows if r["status"] == "kept"):
        frames, rotation = zoo.decode_clip(curated["mp4s"][r["clip_id"]])  # (T, H, W, 3)
        h, w = frames.shape[1:3]
        if (r["width"], r["height"]) != (w, h):
            problems.append(f"{r['clip_id']}: manifest says {r['width']}x{r['height']}, the clip is {w}x{h}")
        if (w > h) != (truth.size[0] > truth.size[1]) or abs(w / h - truth.size[0] / truth.size[1]) > 0.02:
            problems.append(f"{r['clip_id']}: {w}x{h}, display size {truth.size}")
        if rotation:
            problems.append(
                f"{r['clip_id']}: the clip carries a {rotation}° display matrix; store it upright"
            )
        if zoo.read_barcode(frames[0]) < 0:
            how = zoo.misorientation(frames[0], truth.size) or "its barcode does not read"
            problems.append(f"{r['clip_id']}: first frame not upright ({how})")
    assert not problems, f"{f.name} ({f.what}): " + " | ".join(problems)


def test_curate_refuses_a_display_matrix_it_cannot_apply_with_a_reason(curated, odd_rotation):
    entry = curated["inputs"][odd_rotation.name]
    rows = curated["rows"].get(odd_rotation.name, [])
    assert entry["status"] == "error", f"45° display matrix: status {entry['status']}, {len(rows)} clips"
    reason = (entry["reason"] or "").lower()
    assert str(odd_rotation).lower() in reason and ("rotat" in reason or "display matrix" in reason), reason
    assert rows == []
