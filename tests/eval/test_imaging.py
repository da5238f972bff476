"""imaging_quality's VBench handling around MUSIQ: frame resizing, per-video mean, aggregate / 100.

pyiqa is an optional dependency that is not installed here; a stand-in module with MUSIQ's
constructor and call signature checks what vdiff does around the network.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from eval.config import EvalConfig, WeightsConfig
from eval.metrics.imaging import ImagingQuality
from eval.registry import MissingDependencyError, MissingWeightsError, VideoSample

# NOTE: the crafted-file helper lives in the checkpoint tests' conftest; import it as a module.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


class StandInMUSIQ(torch.nn.Module):
    """Scores a (B, 3, H, W) batch in [0, 1] as 100 * its mean; records the input sizes."""

    seen: ClassVar[list[tuple[int, ...]]] = []

    def __init__(self, pretrained_model_path: str) -> None:
        super().__init__()
        self.path = pretrained_model_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        StandInMUSIQ.seen.append(tuple(x.shape))
        return 100 * x.mean(dim=(1, 2, 3), keepdim=True)[:, :, 0]  # (B, 1)


@pytest.fixture
def fake_pyiqa(monkeypatch):
    arch = types.ModuleType("pyiqa.archs.musiq_arch")
    arch.MUSIQ = StandInMUSIQ
    for name, mod in (("pyiqa", types.ModuleType("pyiqa")), ("pyiqa.archs", types.ModuleType("pyiqa.archs"))):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setitem(sys.modules, "pyiqa.archs.musiq_arch", arch)
    StandInMUSIQ.seen = []


def test_imaging_quality_resizes_longer_side_and_scales_aggregate(fake_pyiqa, tmp_path):
    torch.save({}, tmp_path / "musiq.pth")  # the stand-in loads nothing; vdiff checks the file is plain data
    metric = ImagingQuality(
        EvalConfig(batch_size=2, weights=WeightsConfig(musiq=str(tmp_path / "musiq.pth")))
    )
    frames = np.stack([np.full((600, 1024, 3), v, np.uint8) for v in (51, 102, 153)])
    out = metric.compute(VideoSample(path=Path("v-0.mp4"), prompt="", frames=frames, fps=8))
    # Longer side 1024 > 512: scale 0.5 -> 300 x 512; batches of 2 frames.
    assert StandInMUSIQ.seen == [(2, 3, 300, 512), (1, 3, 300, 512)]
    assert out["video_results"] == pytest.approx(100 * (0.2 + 0.4 + 0.6) / 3, abs=1e-4)
    # VBench keeps per-video scores on MUSIQ's 0-100 scale and divides the aggregate by 100.
    assert metric.aggregate([{"video_results": 40.0}, {"video_results": 60.0}]) == pytest.approx(0.5)


def test_imaging_quality_errors_name_file_and_package(tmp_path, monkeypatch):
    monkeypatch.delenv("VDIFF_MUSIQ", raising=False)
    with pytest.raises(MissingWeightsError, match=r"musiq_spaq_ckpt-358bb6af\.pth"):
        ImagingQuality(EvalConfig())
    (tmp_path / "musiq.pth").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match="pip install pyiqa"):
        ImagingQuality(EvalConfig(weights=WeightsConfig(musiq=str(tmp_path / "musiq.pth"))))


def test_a_musiq_checkpoint_that_would_run_code_is_refused_before_pyiqa_reads_it(fake_pyiqa, tmp_path):
    from tests.vdiff.checkpoint.conftest import RunsCode

    marker, weights = tmp_path / "MARKER", tmp_path / "musiq.pth"
    torch.save(RunsCode(marker), weights)
    with pytest.raises(
        ValueError, match=rf"weights\.musiq {re.escape(str(weights))} asks to load exec.*refusing"
    ):
        ImagingQuality(EvalConfig(weights=WeightsConfig(musiq=str(weights))))
    assert not marker.exists()
