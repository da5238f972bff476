"""Text-video dimensions with VBench's own models: appearance_style (OpenAI CLIP ViT-B/32),
overall_consistency and temporal_style (ViCLIP ViT-L/14).

The maths follow VBench's ``vbench/appearance_style.py``, ``overall_consistency.py`` and
``temporal_style.py``; the networks are :mod:`eval.models.clip` and :mod:`eval.models.viclip`,
loaded strictly from the published checkpoints. Without ``weights.viclip``, overall_consistency
falls back to the labelled CLIP substitute of :mod:`eval.metrics.features`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# NOTE: imported first so that its CLIP overall_consistency registers before this module's, which
# replaces it (and falls back to it) whatever order the metric modules are imported in.
import eval.metrics.features  # noqa: F401
from eval.frames import CLIP_MEAN, CLIP_STD, batches, clip_transform, middle_frame_indices, shorter_side_size
from eval.metric import (
    Metric,
    MissingWeightsError,
    UnscorableVideoError,
    VideoSample,
    register_metric,
    resolve_weight,
)

APPEARANCE_STYLES = (
    "Van Gogh style",
    "animated style",
    "black and white",
    "by Hokusai, in the style of Ukiyo",
    "in cyberpunk style",
    "oil painting",
    "pixel art",
    "surrealism style",
    "watercolor painting",
)
"""The ``auxiliary_info.appearance_style`` values of VBench's suite; each ends its prompt."""


def appearance_style_text(video: VideoSample) -> str:
    """The style text VBench compares with: the suite's ``auxiliary_info`` when the sample carries
    it, else the VBench style that ends the prompt."""
    aux = getattr(video, "auxiliary_info", None) or {}
    style = aux.get("appearance_style")
    if isinstance(style, dict):  # VBench's suite nests it: {"appearance_style": {"appearance_style": s}}
        style = style.get("appearance_style")
    if style:
        return str(style)
    for s in sorted(APPEARANCE_STYLES, key=len, reverse=True):
        if video.prompt.rstrip().endswith(s):
            return s
    raise UnscorableVideoError(
        f"prompt {video.prompt!r} ends in none of VBench's appearance styles {list(APPEARANCE_STYLES)}"
    )


def clip_image_transform(frames: np.ndarray, n_px: int = 224) -> torch.Tensor:
    """VBench ``clip_transform_Image`` on PIL images: ``Resize(n_px, BICUBIC)`` (PIL's resampling,
    which filters when shrinking, rounded to uint8), ``CenterCrop(n_px)``, ``ToTensor`` (/255),
    CLIP normalisation. (T, H, W, 3) uint8 -> (T, 3, n_px, n_px) float32."""
    out = []
    for frame in frames:
        img = Image.fromarray(np.ascontiguousarray(frame))
        h, w = shorter_side_size(img.height, img.width, n_px)
        img = img.resize((w, h), Image.BICUBIC)
        top, left = round((h - n_px) / 2.0), round((w - n_px) / 2.0)
        img = img.crop((left, top, left + n_px, top + n_px))
        out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
    x = torch.stack(out)  # (T, 3, n_px, n_px)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _tokenizer(cfg: Any, dimension: str):  # -> BPETokenizer
    from eval.models.clip import BPETokenizer

    path = resolve_weight(
        cfg.weights.clip_bpe,
        key="weights.clip_bpe",
        env="VDIFF_CLIP_BPE",
        what="CLIP's BPE vocabulary bpe_simple_vocab_16e6.txt.gz (openai/CLIP clip/)",
        dimension=dimension,
    )
    return BPETokenizer(path)


@register_metric("appearance_style", doc="CLIP ViT-B/32 frame-to-style-text similarity (logit / 100)")
class AppearanceStyle(Metric):
    """Per frame ``logits_per_text / 100`` (= exp(logit_scale) * cos / 100) between the frame and the
    style text; per video the frame mean; the aggregate is the mean over all frames of all videos."""

    name = "appearance_style"

    def __init__(self, cfg: Any) -> None:
        from eval.models.clip import load_clip

        path = resolve_weight(
            cfg.weights.clip_b32_openai,
            key="weights.clip_b32_openai",
            env="VDIFF_CLIP_B32_OPENAI",
            what="OpenAI's CLIP ViT-B-32.pt (as clip.load reads it)",
            dimension=self.name,
        )
        self.tokenizer = _tokenizer(cfg, self.name)
        self.model = load_clip(path, cfg.device)
        self.device, self.batch_size = cfg.device, cfg.batch_size

    @torch.no_grad()
    def frame_scores(self, frames: np.ndarray, text: str) -> torch.Tensor:
        """(T,) per-frame ``logits_per_text[0][0] / 100``."""
        tokens = self.tokenizer.tokenize([text], context_length=self.model.context_length).to(self.device)
        out = []
        for b in batches(clip_image_transform(frames), self.batch_size):
            _, logits_per_text = self.model(b.to(self.device), tokens)  # (1, B)
            out.append(logits_per_text[0].float().cpu() / 100.0)
        return torch.cat(out)

    def compute(self, video: VideoSample) -> dict[str, Any]:
        scores = self.frame_scores(video.frames, appearance_style_text(video))
        return {
            "video_results": float(scores.mean()),
            "frame_sum": float(scores.sum()),
            "frame_count": len(scores),
        }

    def aggregate(self, entries: list[dict[str, Any]]) -> float:
        # NOTE: VBench sums every frame's score and divides by the frame count (sim / cnt).
        count = sum(e["frame_count"] for e in entries)
        return sum(e["frame_sum"] for e in entries) / count if count else float("nan")


def viclip_frames(frames: np.ndarray) -> torch.Tensor:
    """VBench's ViCLIP input: 8 "middle"-sampled frames through ``clip_transform(224)`` (tensor path:
    bicubic without antialias, centre crop, /255, CLIP normalisation). -> (1, 8, 3, 224, 224)."""
    return clip_transform(frames[middle_frame_indices(8, len(frames))]).unsqueeze(0)


VICLIP_BUILDER = None
"""the ViCLIP architecture builder (None: VBench's ViT-L/14); tests set a tiny one"""


class _ViCLIPTextVideo(Metric):
    """cos(ViCLIP video embedding, ViCLIP text embedding of the prompt); aggregate = mean."""

    def __init__(self, cfg: Any) -> None:
        from eval.models.viclip import load_viclip

        path = resolve_weight(
            cfg.weights.viclip,
            key="weights.viclip",
            env="VDIFF_VICLIP",
            what="ViClip-InternVid-10M-FLT.pth (OpenGVLab/VBench_Used_Models)",
            dimension=self.name,
        )
        self.tokenizer = _tokenizer(cfg, self.name)
        self.model = load_viclip(path, cfg.device, build=VICLIP_BUILDER)
        self.device = cfg.device
        self._text: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_features(self, prompt: str) -> torch.Tensor:
        from eval.models.viclip import viclip_tokenize

        if prompt not in self._text:
            feat = self.model.encode_text(viclip_tokenize(self.tokenizer, prompt).to(self.device))
            self._text[prompt] = F.normalize(feat.float().cpu(), dim=-1)  # (1, E)
        return self._text[prompt]

    @torch.no_grad()
    def compute(self, video: VideoSample) -> dict[str, Any]:
        if not video.prompt:
            raise UnscorableVideoError(
                "no prompt for this video (give --prompts or name it {prompt}-{i}.mp4)"
            )
        feat = self.model.encode_vision(viclip_frames(video.frames).to(self.device))  # (1, E)
        feat = F.normalize(feat.float().cpu(), dim=-1)
        return {"video_results": float((feat @ self.text_features(video.prompt).T)[0, 0])}


class OverallConsistencyViCLIP(_ViCLIPTextVideo):
    """VBench overall consistency: ViCLIP video-text cosine on 8 middle frames."""

    name = "overall_consistency"


@register_metric("temporal_style", doc="ViCLIP video-text cosine similarity (8 middle frames)")
class TemporalStyle(_ViCLIPTextVideo):
    """VBench temporal style: ViCLIP video-text cosine on 8 middle frames."""

    name = "temporal_style"


def _configured(value: str, env: str) -> bool:
    return bool(value or os.environ.get(env, ""))


@register_metric("overall_consistency", doc="ViCLIP video-text cosine similarity (8 middle frames)")
def overall_consistency(cfg: Any) -> Metric:
    """ViCLIP when ``weights.viclip`` is set; else the labelled CLIP ViT-L/14 substitute."""
    if _configured(cfg.weights.viclip, "VDIFF_VICLIP"):
        return OverallConsistencyViCLIP(cfg)
    if _configured(cfg.weights.clip_l14, "VDIFF_CLIP_L14"):
        from eval.metrics.features import OverallConsistency

        return OverallConsistency(cfg)
    raise MissingWeightsError(
        "dimension 'overall_consistency' needs ViCLIP: set config key weights.viclip=PATH "
        "(ViClip-InternVid-10M-FLT.pth) and weights.clip_bpe=PATH, or environment variables "
        "VDIFF_VICLIP and VDIFF_CLIP_BPE (weights.clip_l14 gives a labelled CLIP substitute)"
    )


__all__ = [
    "APPEARANCE_STYLES",
    "AppearanceStyle",
    "OverallConsistencyViCLIP",
    "TemporalStyle",
    "appearance_style_text",
    "clip_image_transform",
    "overall_consistency",
    "viclip_frames",
]
