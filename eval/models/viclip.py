"""ViCLIP (InternVid's ViT-L/14 video CLIP) as VBench's ``vbench/third_party/ViCLIP`` builds it.

The state dict of ``ViClip-InternVid-10M-FLT.pth`` (under its ``model`` key) loads with
``strict=True``: ``vision_encoder.{conv1.weight (Conv3d, kernel (1, 14, 14)), class_embedding,
positional_embedding, temporal_positional_embedding, ln_pre, transformer.resblocks.N.*, ln_post, proj}``,
``text_encoder.{transformer.resblocks.N.*, token_embedding.weight, positional_embedding (32 tokens),
ln_final, text_projection}`` and ``temp``. The blocks are CLIP's (:mod:`eval.models.clip`);
dropout and drop-path, inactive at test time, are left out (they hold no parameters).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from eval.models.clip import BPETokenizer, LayerNorm, Transformer, causal_mask, read_state_dict

VICLIP_CONTEXT = 32
"""ViCLIP's ``max_txt_l``: text is tokenized to 32 tokens, truncated (ending in eot)."""
VICLIP_FRAMES = 8
"""``video_input_num_frames``: the length of the temporal position embedding."""


class VideoVisionTransformer(nn.Module):
    """Per-frame patches with spatial and temporal position embeddings; one joint transformer over
    ``1 + T * grid^2`` tokens; ``ln_post(cls) @ proj``."""

    def __init__(
        self,
        input_resolution: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        num_frames: int = VICLIP_FRAMES,
        kernel_size: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(
            3, width, (kernel_size, patch_size, patch_size), (kernel_size, patch_size, patch_size), bias=False
        )
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width)
        )
        self.ln_pre = nn.LayerNorm(width)
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, num_frames, width))
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, R, R) -> (B, output_dim)
        x = self.conv1(x)  # (B, C, T, g, g)
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)  # (B*T, N, C)
        cls = self.class_embedding.to(x.dtype).expand(b * t, 1, c)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B*T, 1+N, C)
        # NOTE: VBench keeps x[:B, :1] as the class tokens: with one video per call (B = 1, as
        # VBench scores) that is the first frame's class token.
        cls_tokens = x[:b, :1, :]  # (B, 1, C)
        x = x[:, 1:].reshape(b, t, h * w, c).permute(0, 2, 1, 3)  # (B, N, T, C)
        if t == 1:
            x = x + self.temporal_positional_embedding.mean(1)
        else:
            x = x + self.temporal_positional_embedding  # (1, T, C) broadcast
        x = x.reshape(b, h * w * t, c)  # (B, N*T, C), frame index fastest
        x = self.ln_pre(torch.cat([cls_tokens, x], dim=1)).permute(1, 0, 2)  # (1+N*T, B, C)
        x = self.ln_post(self.transformer(x))
        return x[0] @ self.proj  # (B, output_dim)


class ViCLIPText(nn.Module):
    """CLIP text tower with a 32-token context: features at the eot position, projected."""

    def __init__(
        self, embed_dim: int, context_length: int, vocab_size: int, width: int, heads: int, layers: int
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.transformer = Transformer(width, layers, heads, causal_mask(context_length))
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width).normal_(std=0.01))
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim).normal_(std=width**-0.5))

    def forward(self, text: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, E)
        x = self.token_embedding(text) + self.positional_embedding  # (B, L, D)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection


class ViCLIP(nn.Module):
    """``vision_encoder`` + ``text_encoder`` + ``temp`` (the contrastive temperature, unused here)."""

    def __init__(self, vision_encoder: VideoVisionTransformer, text_encoder: ViCLIPText) -> None:
        super().__init__()
        self.vision_encoder = vision_encoder
        self.text_encoder = text_encoder
        self.temp = nn.Parameter(torch.tensor(1 / 100.0))

    def encode_vision(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, R, R) normalised frames -> (B, E) (VBench's ``encode_vision(test=True)``)."""
        return self.vision_encoder(video.permute(0, 2, 1, 3, 4).contiguous())  # (B, 3, T, R, R)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, 32) -> (B, E)
        return self.text_encoder(tokens)


def viclip(
    *,
    input_resolution: int = 224,
    patch_size: int = 14,
    vision_width: int = 1024,
    vision_layers: int = 24,
    vision_heads: int = 16,
    embed_dim: int = 768,
    num_frames: int = VICLIP_FRAMES,
    context_length: int = VICLIP_CONTEXT,
    vocab_size: int = 49408,
    text_width: int = 768,
    text_heads: int = 12,
    text_layers: int = 12,
) -> ViCLIP:
    """ViCLIP; the defaults are VBench's ``clip_joint_l14`` + ``clip_text_l14`` (ViClip-InternVid-10M-FLT)."""
    vision = VideoVisionTransformer(
        input_resolution, patch_size, vision_width, vision_layers, vision_heads, embed_dim, num_frames
    )
    text = ViCLIPText(embed_dim, context_length, vocab_size, text_width, text_heads, text_layers)
    return ViCLIP(vision, text)


def load_viclip(path: Path, device: str = "cpu", build: Callable[[], ViCLIP] | None = None) -> ViCLIP:
    """ViCLIP-L/14 from ``ViClip-InternVid-10M-FLT.pth`` (its ``model`` entry), strict, eval mode.

    ``build`` makes the architecture (default :func:`viclip`, VBench's sizes; tests pass tiny ones).
    """
    state = read_state_dict(path, what="weights.viclip")
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model = (build or viclip)()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: not a ViCLIP ViT-L/14 state dict ({e})") from e
    return model.float().to(device).eval()


def viclip_tokenize(tokenizer: BPETokenizer, text: str) -> torch.Tensor:
    """(1, 32) ids as ViCLIP's ``encode_text``: ``tokenize(text, context_length=32, truncate=True)``."""
    return tokenizer.tokenize([text], context_length=VICLIP_CONTEXT, truncate=True)
