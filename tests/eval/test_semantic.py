"""appearance_style, overall_consistency, temporal_style: VBench's pre- and post-processing around
tiny random CLIP / ViCLIP models saved as weight files, and the missing-weight errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval.metrics.semantic as semantic
from eval.config import EvalConfig, WeightsConfig
from eval.metric import MissingWeightsError, UnscorableVideoError, VideoSample
from eval.models.clip import BPETokenizer
from eval.registry import build_metric
from tests.eval.test_clip_models import save_tiny_clip, tiny_bpe, tiny_clip, tiny_viclip

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # vbench/utils.py clip_transform(_Image)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for env in ("VDIFF_CLIP_B32_OPENAI", "VDIFF_CLIP_BPE", "VDIFF_VICLIP", "VDIFF_CLIP_L14"):
        monkeypatch.delenv(env, raising=False)


def sample(frames: np.ndarray, prompt: str) -> VideoSample:
    return VideoSample(path=Path(f"{prompt}-0.mp4"), prompt=prompt, frames=frames, fps=8)


def test_clip_image_transform_sizes_and_constants():
    frames = np.full((2, 240, 320, 3), 128, np.uint8)
    x = semantic.clip_image_transform(frames)
    assert x.shape == (2, 3, 224, 224)
    expected = [(128 / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]
    torch.testing.assert_close(x[0, :, 100, 100], torch.tensor(expected), atol=1e-5, rtol=0)
    # PIL path: resize shorter side to 224 (240x320 -> 224x298), crop left round((298-224)/2) = 37
    ramp = np.tile((np.arange(320) % 256).astype(np.uint8)[None, :, None], (240, 1, 3))[None]
    from PIL import Image

    ref = np.asarray(Image.fromarray(ramp[0]).resize((298, 224), Image.BICUBIC))[:, 37 : 37 + 224]
    got = semantic.clip_image_transform(ramp)[0, 0] * CLIP_STD[0] + CLIP_MEAN[0]
    torch.testing.assert_close(got, torch.from_numpy(ref[..., 0] / 255.0).float(), atol=1e-5, rtol=0)


def test_appearance_style_text_from_prompt_or_auxiliary_info():
    assert semantic.appearance_style_text(
        sample(np.zeros((1, 8, 8, 3), np.uint8), "a shark, oil painting")
    ) == ("oil painting")
    hokusai = "The bund Shanghai by Hokusai, in the style of Ukiyo"
    assert semantic.appearance_style_text(sample(np.zeros((1, 8, 8, 3), np.uint8), hokusai)).startswith(
        "by Hokusai"
    )
    v = sample(np.zeros((1, 8, 8, 3), np.uint8), "anything")
    v.auxiliary_info = {"appearance_style": {"appearance_style": "pixel art"}}  # VBench's nesting
    assert semantic.appearance_style_text(v) == "pixel art"
    with pytest.raises(UnscorableVideoError, match="appearance styles"):
        semantic.appearance_style_text(sample(np.zeros((1, 8, 8, 3), np.uint8), "a cat"))


def test_appearance_style_scores_logit_over_100_and_frame_weighted_aggregate(tmp_path):
    model = tiny_clip().eval()
    cfg = EvalConfig(
        batch_size=2,
        weights=WeightsConfig(
            clip_b32_openai=str(save_tiny_clip(tmp_path / "ViT-B-32.pt", model)),
            clip_bpe=str(tiny_bpe(tmp_path / "bpe.txt.gz")),
        ),
    )
    metric = build_metric("appearance_style", cfg)
    assert metric.comparable and metric.method == "vbench"
    rng = np.random.default_rng(0)
    a = sample(rng.integers(0, 255, (3, 64, 80, 3), dtype=np.uint8), "a hello, pixel art")
    b = sample(rng.integers(0, 255, (1, 64, 80, 3), dtype=np.uint8), "a hello, pixel art")
    ea, eb = metric.compute(a), metric.compute(b)
    tokens = BPETokenizer(tmp_path / "bpe.txt.gz").tokenize(["pixel art"])
    with torch.no_grad():
        img = F.normalize(model.encode_image(semantic.clip_image_transform(a.frames)), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
    expected = (model.logit_scale.detach().exp() * img @ txt.T / 100).squeeze(1)  # (3,)
    assert ea["video_results"] == pytest.approx(float(expected.mean()), abs=1e-5)
    assert ea["frame_count"] == 3 and eb["frame_count"] == 1
    agg = metric.aggregate([ea, eb])
    assert agg == pytest.approx((ea["frame_sum"] + eb["frame_sum"]) / 4)


def test_viclip_frames_sample_8_middle_frames_and_normalise():
    frames = np.stack([np.full((48, 64, 3), i, np.uint8) for i in range(16)])
    x = semantic.viclip_frames(frames)
    assert x.shape == (1, 8, 3, 224, 224)
    # get_frame_indices(8, 16, "middle") -> [0, 2, 4, ..., 14]; a 5-frame video pads with its last index
    got = (x[0, :, 0, 112, 112] * CLIP_STD[0] + CLIP_MEAN[0]) * 255
    torch.testing.assert_close(got, torch.arange(0, 16, 2).float(), atol=1e-3, rtol=0)
    short = semantic.viclip_frames(frames[:5])
    got = (short[0, :, 0, 112, 112] * CLIP_STD[0] + CLIP_MEAN[0]) * 255
    torch.testing.assert_close(got, torch.tensor([0, 1, 2, 3, 4, 4, 4, 4]).float(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", ["overall_consistency", "temporal_style"])
def test_viclip_dimensions_score_cosine(name, tmp_path, monkeypatch):
    model = tiny_viclip().eval()
    torch.save({"model": model.state_dict()}, tmp_path / "viclip.pth")
    monkeypatch.setattr(semantic, "VICLIP_BUILDER", tiny_viclip)
    cfg = EvalConfig(
        weights=WeightsConfig(
            viclip=str(tmp_path / "viclip.pth"), clip_bpe=str(tiny_bpe(tmp_path / "bpe.txt.gz"))
        )
    )
    metric = build_metric(name, cfg)
    assert metric.comparable and metric.method == "vbench" and metric.name == name
    frames = np.random.default_rng(0).integers(0, 255, (12, 40, 60, 3), dtype=np.uint8)
    out = metric.compute(sample(frames, "hello hello"))
    tokens = BPETokenizer(tmp_path / "bpe.txt.gz").tokenize(["hello hello"], context_length=32, truncate=True)
    with torch.no_grad():
        v = F.normalize(model.encode_vision(semantic.viclip_frames(frames)), dim=-1)
        t = F.normalize(model.encode_text(tokens), dim=-1)
    assert out["video_results"] == pytest.approx(float(v @ t.T), abs=1e-5)
    with pytest.raises(UnscorableVideoError, match="no prompt"):
        metric.compute(sample(frames, ""))


def test_missing_weights_name_the_config_keys(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"weights.clip_b32_openai"):
        build_metric("appearance_style", EvalConfig())
    with pytest.raises(MissingWeightsError, match=r"weights.viclip"):
        build_metric("overall_consistency", EvalConfig())
    with pytest.raises(MissingWeightsError, match=r"weights.viclip"):
        build_metric("temporal_style", EvalConfig())
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(MissingWeightsError, match=r"weights.viclip"):
        build_metric("overall_consistency", EvalConfig(weights=WeightsConfig(viclip=missing)))
    torch.save({}, tmp_path / "v.pth")
    with pytest.raises(MissingWeightsError, match=r"weights.clip_bpe"):
        build_metric("temporal_style", EvalConfig(weights=WeightsConfig(viclip=str(tmp_path / "v.pth"))))
