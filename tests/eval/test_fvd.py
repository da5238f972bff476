"""FVD: Fréchet distance against closed forms, and the set-level metric with a tiny TorchScript detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eval.config import EvalConfig, WeightsConfig
from eval.metrics.fvd import FVD, frechet_distance, gaussian_stats
from eval.registry import MissingWeightsError, VideoSample
from eval.runner import decode
from vdiff.io.video import write_mp4


def test_frechet_distance_of_diagonal_gaussians_closed_form():
    # For commuting (diagonal) covariances: |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    want = 1.0 + 0.0 + 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, abs=1e-9)


def test_frechet_distance_general_covariances_and_identical_sets():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(4, 4))
    s = m @ m.T + np.eye(4)
    # Same covariance: only the mean term remains.
    assert frechet_distance(np.zeros(4), s, np.ones(4), s) == pytest.approx(4.0, abs=1e-8)
    # Scaled covariance c^2 S: Tr(S + c^2 S - 2 c S) = (1 - c)^2 Tr(S).
    assert frechet_distance(np.zeros(4), s, np.zeros(4), 9 * s) == pytest.approx(4 * np.trace(s), rel=1e-8)
    feats = rng.normal(size=(50, 6))
    assert frechet_distance(*gaussian_stats(feats), *gaussian_stats(feats.copy())) == pytest.approx(
        0.0, abs=1e-8
    )


class TinyDetector(torch.nn.Module):
    """Same call signature as StyleGAN-V's i3d_torchscript.pt; features are per-channel means."""

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ):
        if rescale:
            x = x / 127.5 - 1.0
        return x.mean(dim=(2, 3, 4))  # (B, 3)


def write_colour_videos(folder: Path, colours: list[tuple[int, int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(colours))
    paths = []
    for i, c in enumerate(colours):
        frames = np.clip(np.array(c)[None, None, None] + rng.normal(0, 20, (16, 32, 32, 3)), 0, 255).astype(
            np.uint8
        )
        write_mp4(folder / f"v-{i}.mp4", frames, fps=8)
        paths.append(folder / f"v-{i}.mp4")
    return paths


def test_fvd_metric_matches_frechet_of_detector_features(tmp_path):
    torch.jit.script(TinyDetector()).save(str(tmp_path / "i3d.pt"))
    gen = write_colour_videos(tmp_path / "gen", [(200, 40, 40), (180, 60, 50), (220, 30, 70), (190, 80, 20)])
    ref = write_colour_videos(tmp_path / "ref", [(40, 40, 200), (60, 50, 180), (30, 70, 220), (80, 20, 190)])
    cfg = EvalConfig(fvd_reference=str(tmp_path / "ref"), weights=WeightsConfig(i3d=str(tmp_path / "i3d.pt")))
    metric = FVD(cfg)
    for p in gen:
        frames, fps = decode(p)
        metric.accumulate(VideoSample(path=p, prompt="", frames=frames, fps=fps))

    def feats(paths):
        return np.stack([decode(p)[0][:16].reshape(-1, 3).mean(0) / 127.5 - 1.0 for p in paths])

    want = frechet_distance(*gaussian_stats(feats(gen)), *gaussian_stats(feats(ref)))
    assert metric.finalize() == pytest.approx(want, rel=1e-4)
    assert want > 1.0


def test_fvd_needs_detector_and_reference(tmp_path, monkeypatch):
    monkeypatch.delenv("VDIFF_I3D", raising=False)
    with pytest.raises(MissingWeightsError, match=r"i3d_torchscript\.pt"):
        FVD(EvalConfig(fvd_reference=str(tmp_path)))
    torch.jit.script(TinyDetector()).save(str(tmp_path / "i3d.pt"))
    with pytest.raises(FileNotFoundError, match="fvd_reference"):
        FVD(EvalConfig(weights=WeightsConfig(i3d=str(tmp_path / "i3d.pt"))))


def test_frechet_distance_matches_matrix_square_root_definition():
    # Reference: Tr((S1 S2)^(1/2)) from scipy's general matrix square root.
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    ref = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2) - 2 * np.trace(np.real(scipy_linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)


def test_unreadable_reference_is_listed_not_fatal(tmp_path):
    torch.jit.script(TinyDetector()).save(str(tmp_path / "i3d.pt"))
    gen = write_colour_videos(tmp_path / "gen", [(200, 40, 40), (180, 60, 50), (220, 30, 70)])
    write_colour_videos(tmp_path / "ref", [(40, 40, 200), (60, 50, 180), (30, 70, 220)])
    (tmp_path / "ref" / "broken.mp4").write_bytes(b"junk")
    cfg = EvalConfig(
        dimensions=["fvd"],
        fvd_reference=str(tmp_path / "ref"),
        weights=WeightsConfig(i3d=str(tmp_path / "i3d.pt")),
    )
    from eval import evaluate

    out = evaluate(gen[0].parent, tmp_path / "out", config=cfg, progress=False)
    assert out["results"]["fvd"][0] > 1.0 and out["results"]["fvd"][1] == []
    excluded = out["info"]["dimensions"]["fvd"]["excluded"]
    assert [e["video_path"].split("/")[-1] for e in excluded] == ["broken.mp4"]
    assert "fvd reference not used" in excluded[0]["reason"]
