"""Feature-model dimensions: subject_consistency (DINO), background_consistency (CLIP ViT-B/32),
aesthetic_quality (CLIP ViT-L/14 + LAION linear head), overall_consistency (CLIP per frame,
a labelled substitute for VBench's ViCLIP).

Models load from local folders with transformers (``local_files_only=True``); the maths follow
VBench's ``vbench/subject_consistency.py``, ``background_consistency.py``,
``aesthetic_quality.py`` and ``overall_consistency.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eval.frames import batches, clip_transform, dino_transform, middle_frame_indices
from eval.metric import Metric, UnscorableVideoError, VideoSample, register_metric, resolve_weight


def consistency_sum(features: torch.Tensor) -> tuple[float, int]:
    """VBench's consistency: for each frame i >= 1, the mean of max(0, cos(f_i, f_{i-1})) and
    max(0, cos(f_i, f_0)); returns (sum over frames, number of frames summed)."""
    f = F.normalize(features.float(), dim=-1)  # (T, D)
    if len(f) < 2:
        raise UnscorableVideoError(f"needs at least 2 frames, got {len(f)}")
    prev = (f[1:] * f[:-1]).sum(-1).clamp(min=0.0)  # (T-1,)
    first = (f[1:] * f[:1]).sum(-1).clamp(min=0.0)  # (T-1,)
    return float(((prev + first) / 2).sum()), len(f) - 1


def pooled_features(out: Any) -> torch.Tensor:
    """transformers 4.x returns a tensor from get_*_features, 5.x an output with pooler_output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_clip(path: Path, device: str):  # -> transformers.CLIPModel
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(path), local_files_only=True).to(device).eval()


@torch.no_grad()
def clip_image_features(model: Any, pixels: torch.Tensor, *, batch_size: int, device: str) -> torch.Tensor:
    """(T, 3, 224, 224) normalised pixels -> (T, D) projected CLIP image embeddings, float32."""
    feats = [
        pooled_features(model.get_image_features(pixel_values=b.to(device)))
        for b in batches(pixels, batch_size)
    ]
    return torch.cat(feats).float().cpu()


class _ConsistencyMetric(Metric):
    """Per-video mean of VBench's consistency; the aggregate is the per-frame mean over all videos."""

    def compute(self, video: VideoSample) -> dict[str, Any]:
        total, pairs = consistency_sum(self.features(video.frames))
        return {"video_results": total / pairs, "video_sim": total, "cnt_per_video": pairs}

    def aggregate(self, entries: list[dict[str, Any]]) -> float:
        # NOTE: VBench divides the summed similarity by the number of frame pairs over all videos,
        # so longer videos weigh more; the same is done here.
        pairs = sum(e["cnt_per_video"] for e in entries)
        return sum(e["video_sim"] for e in entries) / pairs if pairs else float("nan")

    def features(self, frames: np.ndarray) -> torch.Tensor:
        """(T, F) per-frame features; each consistency dimension supplies its own (DINO, CLIP)."""
        raise NotImplementedError(f"{type(self).__name__} must define features(frames)")


@register_metric("subject_consistency", doc="DINO feature similarity to the previous and first frame")
class SubjectConsistency(_ConsistencyMetric):
    """VBench subject consistency with a transformers DINO ViT (CLS token of the last layer)."""

    name = "subject_consistency"

    def __init__(self, cfg: Any) -> None:
        path = resolve_weight(
            cfg.weights.dino,
            key="weights.dino",
            env="VDIFF_DINO",
            what="a transformers DINO ViT-B/16 folder (facebook/dino-vitb16)",
            dimension=self.name,
        )
        from transformers import AutoModel

        # NOTE: trust_remote_code=False: a folder's own Python code is refused, never offered on a prompt.
        model = AutoModel.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        self.model = model.to(cfg.device).eval()
        self.device, self.batch_size = cfg.device, cfg.batch_size
        model_type = getattr(self.model.config, "model_type", "")
        # NOTE: ViT needs asking to interpolate position embeddings for non-224 inputs; DINOv2 always does.
        self.forward_kwargs = {"interpolate_pos_encoding": True} if model_type == "vit" else {}
        if model_type != "vit":
            self.method = f"substitute: {model_type} features (VBench: DINO ViT-B/16)"
            self.comparable = False

    @torch.no_grad()
    def features(self, frames: np.ndarray) -> torch.Tensor:
        pixels = dino_transform(frames)  # (T, 3, H', W')
        outs = []
        for b in batches(pixels, self.batch_size):
            hidden = self.model(pixel_values=b.to(self.device), **self.forward_kwargs).last_hidden_state
            outs.append(hidden[:, 0])  # (B, D) CLS token after the final norm
        return torch.cat(outs).float().cpu()


@register_metric(
    "background_consistency", doc="CLIP ViT-B/32 feature similarity to the previous and first frame"
)
class BackgroundConsistency(_ConsistencyMetric):
    """VBench background consistency with a transformers CLIP ViT-B/32."""

    name = "background_consistency"

    def __init__(self, cfg: Any) -> None:
        path = resolve_weight(
            cfg.weights.clip_b32,
            key="weights.clip_b32",
            env="VDIFF_CLIP_B32",
            what="a transformers CLIP ViT-B/32 folder (openai/clip-vit-base-patch32)",
            dimension=self.name,
        )
        self.model = load_clip(path, cfg.device)
        self.device, self.batch_size = cfg.device, cfg.batch_size

    def features(self, frames: np.ndarray) -> torch.Tensor:
        return clip_image_features(
            self.model, clip_transform(frames), batch_size=self.batch_size, device=self.device
        )


def load_linear_head(path: Path, in_features: int) -> torch.nn.Linear:
    """The LAION aesthetic head: a state dict ``{weight: (1, D), bias: (1,)}`` of ``nn.Linear(D, 1)``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        from vdiff.checkpoint import load_plain_weights

        state = load_plain_weights(path, what="weights.aesthetic_head")
    head = torch.nn.Linear(in_features, 1)
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: not an nn.Linear({in_features}, 1) state dict ({e})") from e
    return head.eval()


@register_metric("aesthetic_quality", doc="LAION aesthetic head on CLIP ViT-L/14 frame features, / 10")
class AestheticQuality(Metric):
    """VBench aesthetic quality: mean over frames of head(normalised CLIP feature) / 10."""

    name = "aesthetic_quality"

    def __init__(self, cfg: Any) -> None:
        clip_path = resolve_weight(
            cfg.weights.clip_l14,
            key="weights.clip_l14",
            env="VDIFF_CLIP_L14",
            what="a transformers CLIP ViT-L/14 folder (openai/clip-vit-large-patch14)",
            dimension=self.name,
        )
        head_path = resolve_weight(
            cfg.weights.aesthetic_head,
            key="weights.aesthetic_head",
            env="VDIFF_AESTHETIC_HEAD",
            what="the LAION head sa_0_4_vit_l_14_linear.pth",
            dimension=self.name,
        )
        self.model = load_clip(clip_path, cfg.device)
        self.head = load_linear_head(head_path, self.model.config.projection_dim).to(cfg.device)
        self.device, self.batch_size = cfg.device, cfg.batch_size

    @torch.no_grad()
    def compute(self, video: VideoSample) -> dict[str, Any]:
        feats = clip_image_features(
            self.model, clip_transform(video.frames), batch_size=self.batch_size, device=self.device
        )
        feats = F.normalize(feats, dim=-1)  # (T, D)
        scores = self.head(feats.to(self.device)).squeeze(-1).float().cpu() / 10.0  # (T,)
        return {"video_results": float(scores.mean())}


@register_metric(
    "overall_consistency", doc="text-video cosine similarity (CLIP per frame; VBench uses ViCLIP)"
)
class OverallConsistency(Metric):
    """Mean over 8 'middle'-sampled frames of cos(CLIP image, CLIP text) — a substitute for ViCLIP."""

    name = "overall_consistency"
    method = "substitute: CLIP ViT-L/14 per-frame score (VBench: ViCLIP)"
    comparable = False

    def __init__(self, cfg: Any) -> None:
        path = resolve_weight(
            cfg.weights.clip_l14,
            key="weights.clip_l14",
            env="VDIFF_CLIP_L14",
            what="a transformers CLIP folder with its tokenizer (openai/clip-vit-large-patch14)",
            dimension=self.name,
        )
        from transformers import CLIPTokenizer

        self.model = load_clip(path, cfg.device)
        self.tokenizer = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
        self.device, self.batch_size = cfg.device, cfg.batch_size
        self._text: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_features(self, prompt: str) -> torch.Tensor:
        if prompt not in self._text:
            tok = self.tokenizer([prompt], padding=True, truncation=True, return_tensors="pt").to(self.device)
            out = pooled_features(self.model.get_text_features(**tok))
            self._text[prompt] = F.normalize(out.float().cpu(), dim=-1)  # (1, D)
        return self._text[prompt]

    def compute(self, video: VideoSample) -> dict[str, Any]:
        if not video.prompt:
            raise UnscorableVideoError(
                "no prompt for this video (give --prompts or name it {prompt}-{i}.mp4)"
            )
        idx = middle_frame_indices(8, len(video.frames))
        feats = clip_image_features(
            self.model, clip_transform(video.frames[idx]), batch_size=self.batch_size, device=self.device
        )
        sims = F.normalize(feats, dim=-1) @ self.text_features(video.prompt).T  # (8, 1)
        return {"video_results": float(sims.mean())}
