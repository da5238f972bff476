"""Fixtures for pipeline tests: tiny synthetic inputs for `vdiff curate`."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.samples import write_synthetic_samples


@pytest.fixture(scope="session")
def tiny_videos(tmp_path_factory) -> Path:
    """A folder of five 128x72 synthetic videos with sidecar captions (every filter reason)."""
    folder = tmp_path_factory.mktemp("tiny_videos")
    write_synthetic_samples(folder, size=(72, 128))
    return folder


@pytest.fixture(scope="session")
def small_overrides() -> list[str]:
    """Config overrides that let 128x72 videos pass the size filter."""
    return ["quality.min_width=64", "quality.min_height=48"]
