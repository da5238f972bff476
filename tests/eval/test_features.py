"""Feature-model dimensions with tiny random models saved locally, checked against VBench's formulas."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eval.config import EvalConfig, WeightsConfig
from eval.frames import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, clip_transform, dino_transform
from eval.metrics.features import (
    AestheticQuality,
    BackgroundConsistency,
    OverallConsistency,
    SubjectConsistency,
    consistency_sum,
    load_linear_head,
)
from eval.registry import MissingWeightsError, VideoSample

# NOTE: the crafted-file helper lives in the checkpoint tests' conftest; import it as a module.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def vbench_consistency_loop(features: torch.Tensor) -> float:
    """VBench's per-video loop, written out frame by frame."""
    f = F.normalize(features, dim=-1)
    total = 0.0
    for i in range(1, len(f)):
        sim_pre = max(0.0, F.cosine_similarity(f[i - 1 : i], f[i : i + 1]).item())
        sim_fir = max(0.0, F.cosine_similarity(f[0:1], f[i : i + 1]).item())
        total += (sim_pre + sim_fir) / 2
    return total / (len(f) - 1)


def test_consistency_closed_form():
    # Unit vectors at angles 0, 30, 60, 120 degrees: cos to previous 30, 30, 60 deg; to first 30, 60, 120 deg
    # (clamped at 0).
    deg = torch.tensor([0.0, 30.0, 60.0, 120.0]) * math.pi / 180
    feats = torch.stack([deg.cos(), deg.sin()], dim=-1) * 3.0  # norms do not matter
    c30, c60 = math.cos(math.pi / 6), 0.5
    expected = ((c30 + c30) / 2 + (c30 + c60) / 2 + (c60 + 0.0) / 2) / 3
    total, pairs = consistency_sum(feats)
    assert pairs == 3
    assert total / pairs == pytest.approx(expected, abs=1e-6)
    rand = torch.randn(9, 16)
    assert total / pairs == pytest.approx(vbench_consistency_loop(feats), abs=1e-6)
    t, n = consistency_sum(rand)
    assert t / n == pytest.approx(vbench_consistency_loop(rand), abs=1e-6)


def test_transforms_follow_vbench_sizes_and_normalisation():
    frames = np.full((2, 64, 96, 3), 128, np.uint8)
    clip = clip_transform(frames)
    dino = dino_transform(frames)
    assert clip.shape == (2, 3, 224, 224)
    assert dino.shape == (2, 3, 224, 336)  # shorter side to 224, no crop
    for x, mean, std in ((clip, CLIP_MEAN, CLIP_STD), (dino, IMAGENET_MEAN, IMAGENET_STD)):
        want = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
        torch.testing.assert_close(x[0, :, 100, 100], want, atol=1e-5, rtol=0)


def video(frames: np.ndarray, prompt: str = "a red ball") -> VideoSample:
    return VideoSample(path=Path("v-0.mp4"), prompt=prompt, frames=frames, fps=8.0)


def test_subject_consistency_with_tiny_dino(tiny_dino, synth):
    metric = SubjectConsistency(EvalConfig(weights=WeightsConfig(dino=str(tiny_dino))))
    frames = synth.linear(n=5)
    out = metric.compute(video(frames))
    with torch.no_grad():
        feats = metric.model(pixel_values=dino_transform(frames), interpolate_pos_encoding=True)
    assert out["video_results"] == pytest.approx(
        vbench_consistency_loop(feats.last_hidden_state[:, 0]), abs=1e-5
    )
    assert metric.comparable and out["cnt_per_video"] == 4
    # VBench's aggregate divides the summed similarities by all frame pairs, not by videos.
    entries = [{"video_sim": 3.0, "cnt_per_video": 4}, {"video_sim": 1.0, "cnt_per_video": 1}]
    assert metric.aggregate(entries) == pytest.approx(4.0 / 5.0)


def test_background_consistency_with_tiny_clip(tiny_clip, synth):
    metric = BackgroundConsistency(EvalConfig(weights=WeightsConfig(clip_b32=str(tiny_clip))))
    frames = synth.jitter(n=4)
    out = metric.compute(video(frames))
    with torch.no_grad():
        feats = metric.model.get_image_features(pixel_values=clip_transform(frames))
    feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
    assert out["video_results"] == pytest.approx(vbench_consistency_loop(feats), abs=1e-5)
    assert metric.compute(video(synth.static(n=4)))["video_results"] == pytest.approx(1.0, abs=1e-5)


def test_aesthetic_quality_is_head_of_normalised_features_over_ten(tiny_clip, tmp_path, synth):
    head = torch.nn.Linear(8, 1)
    torch.save(head.state_dict(), tmp_path / "head.pth")
    cfg = EvalConfig(
        weights=WeightsConfig(clip_l14=str(tiny_clip), aesthetic_head=str(tmp_path / "head.pth"))
    )
    metric = AestheticQuality(cfg)
    frames = synth.jitter(n=3)
    with torch.no_grad():
        feats = metric.model.get_image_features(pixel_values=clip_transform(frames))
        feats = F.normalize(feats if isinstance(feats, torch.Tensor) else feats.pooler_output, dim=-1)
        want = (feats @ head.weight.T + head.bias).mean() / 10
    assert metric.compute(video(frames))["video_results"] == pytest.approx(float(want), abs=1e-5)


def test_an_aesthetic_head_that_would_run_code_is_refused_in_one_line(tmp_path):
    from tests.vdiff.checkpoint.conftest import RunsCode

    marker, weights = tmp_path / "MARKER", tmp_path / "head.pth"
    torch.save(RunsCode(marker), weights)
    with pytest.raises(
        ValueError, match=rf"aesthetic_head {re.escape(str(weights))} asks to load exec.*refusing"
    ):
        load_linear_head(weights, 8)
    assert not marker.exists()


def test_a_dino_folder_with_its_own_code_is_refused_without_asking(tmp_path, monkeypatch):
    from tests.vdiff.checkpoint.conftest import custom_code_folder
    from vdiff.encoders import minilm_path

    asked = []
    monkeypatch.setattr("builtins.input", lambda *a: asked.append(a) or "y")  # a user who would say yes
    marker = tmp_path / "MARKER"
    folder = custom_code_folder(minilm_path(), tmp_path / "dino", marker)
    with pytest.raises(ValueError, match="trust_remote_code"):
        SubjectConsistency(EvalConfig(weights=WeightsConfig(dino=str(folder))))
    assert not marker.exists() and not asked


def test_overall_consistency_is_labelled_clip_substitute(tiny_clip, synth):
    metric = OverallConsistency(EvalConfig(weights=WeightsConfig(clip_l14=str(tiny_clip))))
    frames = synth.jitter(n=16)
    with torch.no_grad():
        img = metric.model.get_image_features(
            pixel_values=clip_transform(frames[0::2])
        )  # middle of 8 intervals
        img = F.normalize(img if isinstance(img, torch.Tensor) else img.pooler_output, dim=-1)
        tok = metric.tokenizer(["a red ball"], return_tensors="pt")
        txt = metric.model.get_text_features(**tok)
        txt = F.normalize(txt if isinstance(txt, torch.Tensor) else txt.pooler_output, dim=-1)
    want = float((img @ txt.T).mean())
    assert metric.compute(video(frames))["video_results"] == pytest.approx(want, abs=1e-5)
    assert not metric.comparable and "ViCLIP" in metric.method


def test_missing_weights_name_key_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("VDIFF_DINO", raising=False)
    with pytest.raises(MissingWeightsError, match=r"weights\.dino.*VDIFF_DINO"):
        SubjectConsistency(EvalConfig())
    monkeypatch.setenv("VDIFF_CLIP_B32", str(tmp_path / "nope"))
    with pytest.raises(MissingWeightsError, match="nope"):
        BackgroundConsistency(EvalConfig())


def test_dinov2_folder_loads_but_is_labelled_substitute(tmp_path, synth):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(
        image_size=224, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=1
    )
    Dinov2Model(cfg).eval().save_pretrained(tmp_path / "dinov2")
    metric = SubjectConsistency(EvalConfig(weights=WeightsConfig(dino=str(tmp_path / "dinov2"))))
    assert not metric.comparable and "dinov2" in metric.method
    assert metric.compute(video(synth.static(n=3)))["video_results"] == pytest.approx(1.0, abs=1e-5)
