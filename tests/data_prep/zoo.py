"""The media zoo of issue 12: one source with known cuts, written in containers that trip numbering up.

The source is four textured pans (data_prep.synthetic) joined by hard cuts, with a frame-index
barcode drawn in a band across the top of every frame: 12 black/white cells, a white and a black
reference cell at the ends, 9 Gray-coded bits of the source frame index and a parity bit. The
cells are big (1/12 of the width, 1/8 of the height), so the code survives lossy encoding and
downscaling to the analysis resolution; a frame that is rotated, mirrored or stretched reads as
-1 (the reference cells or the parity do not match). Gray code flips one cell per frame, so the
barcode never looks like a cut.

Every zoo file holds every source frame once, re-encoded by /usr/bin/ffmpeg from raw RGB piped on
stdin. The truth for a file is ffmpeg's own decode of it: presentation order, display matrix
applied (autorotate is on by default), every frame (``-fps_mode passthrough``) — see
:func:`read_truth`.

VFR (``vfr``): the source is piped at 30 fps and re-timed with ``setpts`` before encoding:
frames 0-69 are 1/30 s apart and frames 70-129 are 1/15 s apart (a camera dropping to half rate
mid-shot), muxed with ``-fps_mode passthrough`` so ffmpeg neither drops nor duplicates a frame.
ffmpeg numbers such a file by decoded frame in presentation order — every frame once, whatever
its duration — so frame i is source frame i. (Without passthrough, ffmpeg's rawvideo output is
constant-rate and duplicates frames to fill the 1/15 s gaps; that is not the numbering.)
ffprobe reports r_frame_rate 30/1 and avg_frame_rate 3900/187 (20.86 fps: 130 frames over the
6.23 s from the first to the last timestamp). Clips keep the numbering: with ``output.fps=0``
a clip holds source frames ``start_frame .. end_frame - 1`` one for one, re-timed at the
average rate (the 1/30 s and 1/15 s durations are not kept).

Not a zoo file, but built here: a 45° display matrix, which ffmpeg applies with its ``rotate``
filter (black corners) and no clip cut out of a quarter-turn decoder can match; vdiff must
refuse it with a reason.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data_prep import synthetic as S

FFMPEG = shutil.which("ffmpeg", path="/usr/bin") or "ffmpeg"
FFPROBE = shutil.which("ffprobe", path="/usr/bin") or "ffprobe"

FPS = 25
"""frame rate of every zoo file but the VFR one"""
SIZE = (320, 192)
"""(width, height) of the landscape source; the rotated files show it as 192x320 portrait"""
SCENE_LENGTHS = (32, 38, 27, 33)
"""frames per scene of the source; the cuts are at their running sums"""
CELLS = 12
"""barcode cells: white reference, 9 Gray-coded bits (MSB first), parity, black reference"""
BITS = 9
BAND = 1 / 8
"""barcode band height as a fraction of the frame height"""
MOVES = (("left", 0.25), ("up", 0.3), ("right", 0.2), ("down", 0.25))
"""(direction, speed in frame widths per second) of each scene's pan"""


def source_cuts() -> list[int]:
    """Source frame indices where a new scene starts (not 0)."""
    return np.cumsum(SCENE_LENGTHS)[:-1].tolist()


def num_source_frames() -> int:
    return int(sum(SCENE_LENGTHS))


# ----------------------------------------------------------------------------- barcode


def _cell_bits(index: int) -> list[int]:
    """The 12 cell values (1 = white) that encode ``index``."""
    g = index ^ (index >> 1)
    bits = [(g >> (BITS - 1 - k)) & 1 for k in range(BITS)]
    return [1, *bits, sum(bits) % 2, 0]


def _cell_edges(width: int) -> list[int]:
    return [round(k * width / CELLS) for k in range(CELLS + 1)]


def draw_barcode(frame: np.ndarray, index: int) -> None:
    """Draw the barcode of ``index`` into ``frame`` (H, W, 3) in place."""
    h, w = frame.shape[:2]
    band = round(h * BAND)
    edges = _cell_edges(w)
    for k, bit in enumerate(_cell_bits(index)):
        frame[:band, edges[k] : edges[k + 1]] = 255 if bit else 0


def _cell_means(frame: np.ndarray) -> np.ndarray:
    """(12,) mean brightness of the middle of each barcode cell of ``frame`` (H, W, 3), at any scale."""
    h, w = frame.shape[:2]
    band = h * BAND
    r0 = round(band * 0.25)
    luma = frame[r0 : max(round(band * 0.75), r0 + 1)].astype(np.float32).mean(axis=(0, 2))  # (W,)
    cw = w / CELLS
    spans = [(round((k + 0.25) * cw), round((k + 0.75) * cw)) for k in range(CELLS)]
    return np.array([luma[a : max(b, a + 1)].mean() for a, b in spans])


def read_barcode(frame: np.ndarray) -> int:
    """The source index encoded in ``frame`` (H, W, 3) at any scale; -1 when it does not read."""
    v = _cell_means(frame)  # (12,)
    white, black = v[0], v[-1]
    if white - black < 96 or np.any(np.minimum(abs(v - white), abs(v - black)) > 0.3 * (white - black)):
        return -1
    bits = [int(x > (white + black) / 2) for x in v[1:-1]]
    if sum(bits[:BITS]) % 2 != bits[BITS]:
        return -1
    g = int("".join(map(str, bits[:BITS])), 2)
    n = 0
    while g:
        n ^= g
        g >>= 1
    return n


def read_barcodes(frames: np.ndarray) -> np.ndarray:
    """(T,) int source indices of ``frames`` (T, H, W, 3); -1 where a barcode does not read."""
    return np.array([read_barcode(f) for f in frames], dtype=np.int64)


def misorientation(frame: np.ndarray, size: tuple[int, int]) -> str | None:
    """How ``frame`` (H, W, 3), whose barcode does not read, is turned from upright at display
    ``size`` (w, h); None when no quarter turn makes it read."""
    h, w = frame.shape[:2]
    for k, how in ((1, "90° clockwise"), (2, "180°"), (3, "90° counterclockwise")):
        if read_barcode(np.ascontiguousarray(np.rot90(frame, k))) >= 0:
            # NOTE: the barcode reads at any aspect; a quarter-turned picture in the display's
            # aspect was squeezed into it.
            squeezed = k % 2 == 1 and (w > h) == (size[0] > size[1])
            return f"turned {how}, stretched to {w}x{h}" if squeezed else f"turned {how}"
    return None


# ----------------------------------------------------------------------------- source


def source_frames(width: int, height: int) -> np.ndarray:
    """(T, height, width, 3) uint8 RGB: the pans joined by hard cuts, each frame barcoded."""
    scenes = [
        S.camera_move(
            speed=speed, direction=d, num_frames=n, height=height, width=width, fps=FPS, seed=11 * k
        )
        for k, (n, (d, speed)) in enumerate(zip(SCENE_LENGTHS, MOVES))
    ]
    frames, _ = S.hard_cuts(scenes)
    for i, f in enumerate(frames):
        draw_barcode(f, i)
    return frames


def ffmpeg_encode(frames: np.ndarray, path: Path, *, fps: int, args: list[str]) -> Path:
    """Pipe ``frames`` (T, H, W, 3) as raw RGB into /usr/bin/ffmpeg with output ``args``; return path."""
    h, w = frames.shape[1:3]
    cmd = [FFMPEG, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}"]
    cmd += ["-framerate", str(fps), "-i", "-", *args, "-threads", "1", str(path)]
    subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True, capture_output=True)
    return path


def set_display_rotation(path: Path, degrees: int) -> None:
    """Give the (only) track of an mp4 a display matrix turning it ``degrees`` clockwise (in place).

    The matrix is the one ffmpeg's mov muxer writes for a ``rotate`` tag (ffmpeg 5.1's CLI no
    longer passes that tag on), translation included for quarter turns.
    """
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    assert at > 0 and data.find(b"tkhd", at + 4) < 0, f"{path}: expected exactly one tkhd box"
    matrix_at = at + 4 + 4 + (32 if data[at + 4] == 1 else 20) + 16
    w, h = (x >> 16 for x in struct.unpack(">2I", data[matrix_at + 36 : matrix_at + 44]))
    c, s = round(np.cos(np.radians(degrees)), 6), round(np.sin(np.radians(degrees)), 6)
    tx, ty = {90: (h, 0), 180: (w, h), 270: (0, w)}.get(degrees % 360, (0, 0))
    fixed = [round(c * 65536), round(s * 65536), 0, round(-s * 65536), round(c * 65536), 0]
    fixed += [tx << 16, ty << 16, 1 << 30]
    data[matrix_at : matrix_at + 36] = struct.pack(">9i", *fixed)
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- the zoo


@dataclass(frozen=True)
class ZooFile:
    """One zoo file and what it is meant to exercise."""

    name: str
    path: Path
    what: str
    rotation: int = 0
    """display-matrix rotation written (clockwise degrees, as ffmpeg's ``rotate`` tag counts)"""


H264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-bf", "3"]
VP9 = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-crf", "24", "-b:v", "0"]
VP9 += ["-pix_fmt", "yuv420p"]
MPEG2 = ["-c:v", "mpeg2video", "-q:v", "2", "-bf", "2", "-g", "12", "-pix_fmt", "yuv420p"]
AV1 = ["-c:v", "libsvtav1", "-preset", "12", "-crf", "30", "-pix_fmt", "yuv420p"]
VFR_PTS = "setpts='if(lt(N,70),N,70+2*(N-70))/(30*TB)'"
"""frames 0-69 at 1/30 s, 70-129 at 1/15 s"""


def has_encoder(name: str) -> bool:
    out = subprocess.run([FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return any(line.split()[1:2] == [name] for line in out.splitlines() if line.strip())


def build_zoo(folder: Path) -> list[ZooFile]:
    """Write every zoo file into ``folder`` (a few seconds on 2 cores); return them."""
    folder.mkdir(parents=True, exist_ok=True)
    land = source_frames(*SIZE)  # (T, 192, 320, 3)
    portrait = source_frames(SIZE[1], SIZE[0])  # (T, 320, 192, 3), upright
    zoo = []

    def add(
        name: str, ext: str, what: str, frames: np.ndarray, args: list[str], fps: int = FPS, rotation: int = 0
    ) -> None:
        path = ffmpeg_encode(frames, folder / f"{name}.{ext}", fps=fps, args=args)
        if rotation:
            set_display_rotation(path, rotation)
        zoo.append(ZooFile(name=name, path=path, what=what, rotation=rotation))

    add("h264_bframes", "mp4", "H.264, 3 B-frames, mp4 edit list", land, H264)
    ts = [*H264, "-output_ts_offset", "10", "-f", "mpegts"]
    add("h264_ts_offset", "ts", "H.264 in MPEG-TS starting at 10 s", land, ts)
    add("mpeg2_ps", "mpg", "MPEG-2 with B-frames in MPEG-PS", land, [*MPEG2, "-f", "vob"])
    add("vp9_webm", "webm", "VP9 in WebM", land, VP9)
    if has_encoder("libsvtav1"):
        add("av1_mkv", "mkv", "AV1 (SVT-AV1) in Matroska", land, AV1)
    # NOTE: the stored frames are the upright portrait turned against the display matrix, as a
    # phone writes them: rotate=90 (clockwise on display) stores the picture turned counterclockwise.
    for deg in (90, 270):
        stored = np.ascontiguousarray(np.rot90(portrait, deg // 90, axes=(1, 2)))  # (T, 192, 320, 3)
        what = f"portrait stored landscape, {deg}° display matrix"
        add(f"rot{deg}", "mp4", what, stored, H264, rotation=deg)
    vfr = [*H264, "-vf", VFR_PTS, "-fps_mode", "passthrough", "-video_track_timescale", "30000"]
    add("vfr", "mp4", "H.264 mp4, 30 fps then 15 fps (variable frame rate)", land, vfr, fps=30)
    return zoo


def build_odd_rotation(folder: Path) -> Path:
    """An H.264 mp4 whose display matrix turns it by 45°: no quarter-turn numbering can match it."""
    path = ffmpeg_encode(source_frames(*SIZE), folder / "rot45.mp4", fps=FPS, args=H264)
    set_display_rotation(path, 45)
    return path


# ----------------------------------------------------------------------------- the truth


def ffprobe_video(path: Path) -> dict:
    """ffprobe's view of the first video stream (``streams[0]``) and the container (``format``)."""
    cmd = [FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_streams", "-show_format"]
    out = subprocess.run([*cmd, "-of", "json", str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def display_rotation(probe: dict) -> float:
    """The display matrix rotation ffprobe reports (counterclockwise degrees), 0 without one."""
    sides = probe["streams"][0].get("side_data_list", [])
    return next((float(s["rotation"]) for s in sides if "rotation" in s), 0.0)


def display_size(probe: dict) -> tuple[int, int]:
    """(width, height) after the display matrix, as ffmpeg's autorotate shows it (quarter turns)."""
    s = probe["streams"][0]
    turned = round(display_rotation(probe) / 90) % 2 == 1
    return (int(s["height"]), int(s["width"])) if turned else (int(s["width"]), int(s["height"]))


def ffmpeg_decode(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Every frame as ffmpeg decodes it, (T, H, W, 3) uint8 RGB at display ``size`` (w, h)."""
    cmd = [FFMPEG, "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough"]
    raw = subprocess.run([*cmd, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True)
    w, h = size
    assert len(raw.stdout) % (w * h * 3) == 0, f"{path}: ffmpeg's output is not whole {w}x{h} frames"
    return np.frombuffer(raw.stdout, np.uint8).reshape(-1, h, w, 3)


@dataclass
class Truth:
    """ffmpeg's numbering of one file."""

    codes: np.ndarray
    """(T,) source index of ffmpeg's frame i (its barcode)"""
    size: tuple[int, int]
    """display (width, height)"""
    cuts: list[int]
    """frame indices, in ffmpeg's numbering, where a new scene starts"""
    thumbs: np.ndarray
    """(T, h, w, 3) uint8: ffmpeg's frames at a quarter of the display size"""
    probe: dict


def thumb_size(size: tuple[int, int]) -> tuple[int, int]:
    return size[0] // 4, size[1] // 4


def thumbnail(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``frame`` (H, W, 3) resized to the thumbnail (w, h) of a display ``size``."""
    return cv2.resize(frame, thumb_size(size), interpolation=cv2.INTER_AREA)


def cuts_of(codes: np.ndarray) -> list[int]:
    """Indices i > 0 where frame i's source frame is in another scene than frame i-1's."""
    scene = np.searchsorted(source_cuts(), codes, side="right")  # (T,)
    return [int(i) for i in np.flatnonzero(np.diff(scene)) + 1]


def read_truth(path: Path) -> Truth:
    """Decode ``path`` with ffmpeg and read every frame's barcode."""
    probe = ffprobe_video(path)
    size = display_size(probe)
    frames = ffmpeg_decode(path, size)  # (T, H, W, 3)
    codes = read_barcodes(frames)
    thumbs = np.stack([thumbnail(f, size) for f in frames])
    return Truth(codes=codes, size=size, cuts=cuts_of(codes), thumbs=thumbs, probe=probe)


# ----------------------------------------------------------------------------- vdiff's outputs


def decode_clip(mp4: bytes) -> tuple[np.ndarray, float]:
    """Every frame of an output clip as stored (no display matrix applied), (T, H, W, 3) RGB, and
    the rotation its frames carry (degrees, 0 for none)."""
    import av

    with av.open(io.BytesIO(mp4)) as container:
        frames = list(container.decode(container.streams.video[0]))
    rotation = float(getattr(frames[0], "rotation", 0) or 0) if frames else 0.0
    return np.stack([f.to_ndarray(format="rgb24") for f in frames]), rotation


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference (grey levels) of two (h, w, 3) images of the same shape."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())
