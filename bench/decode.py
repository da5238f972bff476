"""Benchmark: analysis decoding with decord against PyAV (vdiff's FrameReader), accuracy and speed.

For every file (the media zoo of tests/data_prep/zoo.py, built here with the local ffmpeg,
plus bikes.mp4 and vtest.avi when installed), each decoder reads every frame at the analysis
size (short side 128, single-threaded, as one curation worker does). The outside truth is
ffmpeg's own decode (``ffmpeg -i F -fps_mode passthrough``, display matrix applied):

- ``frames``: how many frames the decoder returned, against ffmpeg's count;
- ``exact``: the share of ffmpeg's frames *i* for which the decoder's frame *i* is the same
  picture (nearest of ffmpeg's frames i-8 .. i+8 by mean absolute difference of 32-pixel
  thumbnails, and that difference under 6 grey levels); a shifted or reordered stream scores
  low, and a frame of the wrong orientation never matches;
- ``fps``: decoded frames per second (best of ``--repeat`` runs).

    python bench/decode.py [--repeat N]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from data_prep.decode import AnalysisStream, DecodeConfig, analysis_size
from data_prep.samples import VTEST, bikes_path

REPO = Path(__file__).resolve().parents[1]


def _zoo():
    spec = importlib.util.spec_from_file_location("zoo", REPO / "tests" / "data_prep" / "zoo.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["zoo"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def ffmpeg_frames(path: Path) -> np.ndarray:
    """ffmpeg's frames of ``path`` (passthrough, autorotated) squashed to 64x64 thumbnails, (T, 64, 64, 3)."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-fps_mode", "passthrough", "-f", "rawvideo",
         "-pix_fmt", "rgb24", "-vf", "scale=64:64:flags=area", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(out, np.uint8).reshape(-1, 64, 64, 3)


def thumbs(frames: list[np.ndarray]) -> np.ndarray:
    """(T, 64, 64, 3) thumbnails (the same squashing as ffmpeg_frames, so orientation still counts)."""
    return np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in frames])


def exact_share(got: np.ndarray, truth: np.ndarray, *, portrait_ok: bool) -> float:
    """Share of ffmpeg's frames i that the decoder's frame i reproduces (see the module docstring)."""
    if not portrait_ok:
        return 0.0
    hits = 0
    g = got.astype(np.float32)
    t = truth.astype(np.float32)
    for i in range(min(len(g), len(t))):
        lo, hi = max(0, i - 8), min(len(t), i + 9)
        d = np.abs(t[lo:hi] - g[i]).mean(axis=(1, 2, 3))  # (window,)
        hits += int(lo + int(d.argmin()) == i and d.min() < 6.0)
    return hits / len(t)


def decode_decord(path: Path) -> tuple[list[np.ndarray], float]:
    """Every frame with decord at the analysis size, as curation read them before (chunks of 128)."""
    import decord

    t0 = time.perf_counter()
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    h0, w0 = vr[0].shape[:2]
    w, h = analysis_size(w0, h0, 128)
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, width=w, height=h)
    frames: list[np.ndarray] = []
    for s in range(0, len(vr), 128):
        frames += list(vr.get_batch(list(range(s, min(s + 128, len(vr))))).asnumpy())
    return frames, time.perf_counter() - t0


def decode_pyav(path: Path) -> tuple[list[np.ndarray], float]:
    """Every frame with vdiff's AnalysisStream (PyAV, frame-accurate, upright)."""
    t0 = time.perf_counter()
    with AnalysisStream(path, DecodeConfig()) as stream:
        frames = list(stream)
    return frames, time.perf_counter() - t0


def measure(path: Path, repeat: int) -> dict[str, dict[str, float]]:
    truth = ffmpeg_frames(path)
    tall = _ffmpeg_is_tall(path)
    row: dict[str, dict[str, float]] = {"ffmpeg": {"frames": len(truth)}}
    for name, fn in (("decord", decode_decord), ("pyav", decode_pyav)):
        try:
            best = float("inf")
            for _ in range(repeat):
                frames, seconds = fn(path)
                best = min(best, seconds)
            upright = (frames[0].shape[0] > frames[0].shape[1]) == tall
            row[name] = {
                "frames": len(frames),
                "exact": exact_share(thumbs(frames), truth, portrait_ok=upright),
                "fps": len(frames) / best,
            }
        except Exception as e:  # NOTE: a decoder that fails on a file is a result, not a crash
            row[name] = {"frames": 0, "exact": 0.0, "fps": 0.0, "error": f"{type(e).__name__}"}  # type: ignore[dict-item]
    return row


def _ffmpeg_is_tall(path: Path) -> bool:
    """Whether ffmpeg's (autorotated) first frame is taller than wide, from its PPM header."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "image2pipe", "-c:v", "ppm", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    w, h = (int(x) for x in out.split(b"\n")[1].split())
    return h > w


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per decoder and file (best is kept)")
    args = p.parse_args(argv)
    zoo = _zoo()
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        files = [(z.name, z.path) for z in zoo.build_zoo(Path(tmp))]
        files += [(p.name, p) for p in (bikes_path(), VTEST if VTEST.is_file() else None) if p is not None]
        print("| file | ffmpeg frames | decord frames | decord exact | pyav frames | pyav exact "
              "| decord fps | pyav fps | pyav/decord speed |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for name, path in files:
            r = measure(path, args.repeat)
            d, a = r["decord"], r["pyav"]
            ratio = a["fps"] / d["fps"] if d["fps"] else float("nan")
            derr = f" ({d['error']})" if "error" in d else ""
            cells = [name, r["ffmpeg"]["frames"], f"{d['frames']}{derr}", f"{d['exact']:.1%}", a["frames"]]
            cells += [f"{a['exact']:.1%}", f"{d['fps']:.0f}", f"{a['fps']:.0f}", f"{ratio:.2f}x"]
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
