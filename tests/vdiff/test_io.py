import hashlib
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from vdiff.io import files
from vdiff.io.files import (
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    current_umask,
    safe_extract_path,
)
from vdiff.io.video import (
    VideoError,
    encode_mp4,
    encoder_threads,
    probe,
    read_frames,
    set_encoder_threads,
    write_mp4,
    x264_options,
)


def test_atomic_open_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"partial")
        raise RuntimeError("killed")
    assert not target.exists() and os.listdir(tmp_path) == []


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=oct)
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under this umask, restoring the previous one after."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_it_without_changing_it(umask: int, monkeypatch: pytest.MonkeyPatch) -> None:
    assert current_umask() == umask
    assert os.umask(umask) == umask  # still set

    # Without /proc (not Linux), the set-and-restore fallback gives the same answer.
    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(files, "open", no_proc, raising=False)
    assert current_umask() == umask
    assert os.umask(umask) == umask


def test_temporary_name_writes_honour_the_umask(tmp_path: Path, umask: int) -> None:
    expected = 0o666 & ~umask
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_json(tmp_path / "sub" / "b.json", {"k": 1})
    with atomic_open(tmp_path / "c.bin") as f:
        f.write(b"y")
    with atomic_path(tmp_path / "d.bin") as tmp:
        tmp.unlink()  # a library that recreates the file (gets the umask) ...
        tmp.write_bytes(b"z")
        os.chmod(tmp, 0o600)  # ... or leaves it private
    write_mp4(tmp_path / "e.mp4", np.zeros((2, 16, 16, 3), np.uint8), fps=8)
    # Replacing a private file gives the umask's mode too.
    old = tmp_path / "f.bin"
    old.write_bytes(b"old")
    old.chmod(0o600)
    atomic_write_bytes(old, b"new")
    for name in ("a.bin", "sub/b.json", "c.bin", "d.bin", "e.mp4", "f.bin"):
        assert _mode(tmp_path / name) == expected, (name, oct(_mode(tmp_path / name)))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_tar_member_outside_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside"):
        safe_extract_path(tmp_path, "../evil.txt")
    assert safe_extract_path(tmp_path, "a/b.txt") == (tmp_path / "a/b.txt").resolve()
    assert tarfile  # members are resolved through safe_extract_path before writing


def test_mp4_round_trip_keeps_frames_and_size(tmp_path: Path) -> None:
    t = np.linspace(0, 1, 12)[:, None, None, None]
    frames = (np.ones((12, 48, 64, 3)) * t * 255).astype(np.uint8)  # (T, H, W, 3) brightening ramp
    write_mp4(tmp_path / "a.mp4", frames, fps=12)
    meta = probe(tmp_path / "a.mp4")
    assert (meta.num_frames, meta.width, meta.height) == (12, 64, 48) and abs(meta.fps - 12) < 1e-6
    back = read_frames(tmp_path / "a.mp4")
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 3  # H.264 at crf 18


def test_unreadable_and_empty_files_raise_video_error(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 100)
    with pytest.raises(VideoError, match="empty"):
        probe(tmp_path / "empty.mp4")
    with pytest.raises(VideoError, match="not a readable video"):
        probe(tmp_path / "junk.mp4")


@pytest.mark.parametrize("width", [8, 24, 48])
def test_widths_decord_mis_sizes_still_decode(tmp_path: Path, width: int) -> None:
    # decord raises "size must exactly match" on these widths; read_frames falls back to PyAV.
    frames = np.zeros((5, 32, width, 3), np.uint8)
    frames[:, :, : width // 2] = 200  # left half bright
    write_mp4(tmp_path / "a.mp4", frames, fps=8)
    back = read_frames(tmp_path / "a.mp4", [0, 3])
    assert back.shape == (2, 32, width, 3)
    assert back[:, :, : width // 2 - 2].mean() > 150 and back[:, :, width // 2 + 2 :].mean() < 50
    assert read_frames(tmp_path / "a.mp4", [1], width=16, height=16).shape == (1, 16, 16, 3)


def test_encoder_threads_follow_the_request_and_default_to_the_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    assert encoder_threads(0) == cores and encoder_threads(3) == 3
    with av.open(os.devnull, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        set_encoder_threads(stream, 0)
        # NOTE: PyAV's own default is thread_count 0, which encodes on a single thread.
        assert stream.codec_context.thread_count == cores
        assert stream.codec_context.thread_type.name == "FRAME"


def test_threaded_encoding_keeps_every_frame(tmp_path: Path) -> None:
    frames = np.full((20, 64, 96, 3), 40, dtype=np.uint8)  # a bright square moving right
    for i in range(20):
        frames[i, 20:40, 3 * i : 3 * i + 20] = 220
    for threads in (1, 2):
        path = tmp_path / f"t{threads}.mp4"
        path.write_bytes(encode_mp4(frames, 10, crf=10, threads=threads))
        got = read_frames(path, list(range(20)))
        assert got.shape == frames.shape
        # crf 10: near-lossless; a dropped or reordered frame would put a 180-level square off
        assert np.abs(got.astype(int) - frames.astype(int)).mean() < 3


def moving_square(n: int = 48, h: int = 144, w: int = 340) -> np.ndarray:
    """A red square moving right over seeded noise: (n, h, w, 3) uint8, the same in every process."""
    rng = np.random.default_rng(0)
    frames = rng.integers(60, 100, size=(n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        frames[i, 40:90, 4 * i : 4 * i + 50] = (220, 40, 40)
    return frames


def dirty_heap(seed: int) -> None:
    """Allocate and free buffers of many sizes and contents, so later allocations start with other bytes."""
    rng = np.random.default_rng(seed)
    junk = [rng.bytes(int(n)) for n in rng.integers(1_000, 200_000, 300)]
    del junk


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("threads", [1, 2])
def test_the_same_frames_encode_to_the_same_bytes_in_one_process(threads: int) -> None:
    # NOTE: with libx264's AVX-512 routines on (x264_options turns them off), 340x144 frames gave
    # up to 7 different bitstreams in 8 encodes here, depending on what the heap held before.
    frames = moving_square()
    digests = set()
    for k in range(4):
        dirty_heap(k)
        digests.add(sha(encode_mp4(frames, 24.0, threads=threads)))
    assert len(digests) == 1


def test_a_fresh_process_encodes_the_same_frames_to_the_same_bytes() -> None:
    here = encode_mp4(moving_square(), 24.0, threads=2)
    code = (
        "import hashlib, runpy, sys\n"
        "from vdiff.io.video import encode_mp4\n"
        f"ns = runpy.run_path({__file__!r})\n"
        "sys.stdout.write(hashlib.sha256(encode_mp4(ns['moving_square'](), 24.0, threads=2)).hexdigest())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == sha(here)


def test_x264_options_keep_crf_and_preset_and_turn_off_avx512_only() -> None:
    options = x264_options(crf=23, preset="fast")
    assert options["crf"] == "23" and options["preset"] == "fast"
    params = options.get("x264-params")
    assert params is None or (params.startswith("asm=") and not int(params[4:]) & (1 << 16))
