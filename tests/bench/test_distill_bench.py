"""``bench/distill.py``'s distance to the teacher's videos, on mp4 files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.distill import teacher_l1
from vdiff.io.video import write_mp4


def _video(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, np.full((4, 16, 16, 3), value, dtype=np.uint8), fps=4.0)  # (T, H, W, 3)


def test_teacher_l1_is_the_mean_pixel_difference_of_same_named_videos(tmp_path: Path) -> None:
    names = ["a-0.mp4", "a-1.mp4"]
    for n, (t, s) in zip(names, [(100, 120), (100, 60)]):
        _video(tmp_path / "teacher" / n, t)
        _video(tmp_path / "student" / n, s)
    got = teacher_l1(tmp_path / "student", tmp_path / "teacher", names)
    # NOTE: flat grey frames survive x264 at crf 18 to within a level or two.
    assert got == pytest.approx((20 + 40) / 2 / 255, abs=3 / 255)
    assert teacher_l1(tmp_path / "teacher", tmp_path / "teacher", names) == 0.0
