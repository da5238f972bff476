"""``ModelConfig``: the hyper-parameters of a VideoDiT, and the named presets.

The fields mirror the config of diffusers' ``WanTransformer3DModel`` (Wan2.1) one to one, so a
Wan2.1 checkpoint converts without losing anything and converts back to the same config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vdiff.attention import AttentionConfig


@dataclass
class ModelConfig:
    """Architecture of a VideoDiT (Wan2.1-compatible); ``dim = num_heads * head_dim``."""

    in_channels: int = 16
    """latent channels of the input (the VAE's latent channels; Wan2.1: 16)"""
    out_channels: int = 16
    """channels of the predicted velocity (equal to in_channels for text-to-video)"""
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """(t, h, w) patch of latents that becomes one token"""
    num_heads: int = 12
    """attention heads"""
    head_dim: int = 128
    """channels per head; RoPE splits it across t/h/w as head_dim - 4*(head_dim//6), 2*(head_dim//6) x 2"""
    ffn_dim: int = 8960
    """hidden width of each block's feed-forward network"""
    num_layers: int = 30
    """transformer blocks"""
    text_dim: int = 4096
    """width of the text-encoder embeddings the model cross-attends to (umT5-XXL: 4096)"""
    freq_dim: int = 256
    """width of the sinusoidal timestep embedding"""
    cross_attn_norm: bool = True
    """LayerNorm (with affine weights) before cross-attention"""
    qk_norm: str = "rms_norm_across_heads"
    """query/key normalisation; only Wan's RMSNorm over all heads together is implemented"""
    eps: float = 1e-6
    """epsilon of every LayerNorm and RMSNorm"""
    rope_theta: float = 10000.0
    """RoPE base frequency"""
    rope_max_seq_len: int = 1024
    """kept for diffusers round trips; vdiff computes RoPE tables for any grid size"""
    abs_pos_embed: bool = False
    """add a fixed sin-cos embedding of each token's absolute (t, h, w) position (not in Wan2.1)"""
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    """self-attention backends (not part of the weights; may differ between training and sampling)"""

    @property
    def dim(self) -> int:
        """Hidden width of the transformer."""
        return self.num_heads * self.head_dim

    def rope_dims(self) -> tuple[int, int, int]:
        """Channels of each head rotated by the (t, h, w) position, as in Wan2.1."""
        hw = 2 * (self.head_dim // 6)
        return self.head_dim - 2 * hw, hw, hw

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field if the config cannot build a model."""
        for name in (
            "in_channels",
            "out_channels",
            "num_heads",
            "head_dim",
            "ffn_dim",
            "text_dim",
            "freq_dim",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.num_layers < 0:
            raise ValueError(f"model.num_layers must be >= 0, got {self.num_layers}")
        if len(self.patch_size) != 3 or any(p <= 0 for p in self.patch_size):
            raise ValueError(f"model.patch_size must be three positive ints (t, h, w), got {self.patch_size}")
        t, h, _ = self.rope_dims()
        if self.head_dim < 6 or t <= 0 or t % 2 or h % 2:
            raise ValueError(
                f"model.head_dim={self.head_dim} cannot be split into even RoPE parts for t/h/w "
                f"(got {self.rope_dims()}); use an even head_dim >= 6 such as 12, 16, 64 or 128"
            )
        if self.freq_dim % 2:
            raise ValueError(f"model.freq_dim must be even, got {self.freq_dim}")
        if self.qk_norm != "rms_norm_across_heads":
            raise ValueError(f"model.qk_norm={self.qk_norm!r} is not supported; use 'rms_norm_across_heads'")
        self.attention.validate()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (tuples as lists, nested dataclasses as dicts)."""
        from vdiff.config import to_dict

        return to_dict(self)

    def mismatches(self, got: ModelConfig, *, other: str) -> list[str]:
        """``model.KEY=VALUE (OTHER has VALUE)`` for each field where ``got`` differs from this config."""
        want, have = self.to_dict(), got.to_dict()
        return [f"model.{k}={want[k]!r} ({other} has {have[k]!r})" for k in want if want[k] != have[k]]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; known keys: {sorted(known)}")
        kwargs = dict(data)
        if "patch_size" in kwargs:
            kwargs["patch_size"] = tuple(int(p) for p in kwargs["patch_size"])
        if isinstance(kwargs.get("attention"), dict):
            att = dict(kwargs["attention"])
            att["per_layer"] = {int(k): v for k, v in att.get("per_layer", {}).items()}
            kwargs["attention"] = AttentionConfig(**att)
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg


def videodit_tiny_config(**overrides: Any) -> ModelConfig:
    """For tests: dim 32 (2 heads x 16), 2 layers, text_dim 32, 4 latent channels."""
    base = dict(
        in_channels=4,
        out_channels=4,
        num_heads=2,
        head_dim=16,
        ffn_dim=64,
        num_layers=2,
        text_dim=32,
        freq_dim=32,
        rope_max_seq_len=64,
    )
    return ModelConfig(**{**base, **overrides})


def videodit_demo_config(**overrides: Any) -> ModelConfig:
    """Trains on 2 CPU cores in minutes on ~16x16 latent grids; text_dim 384 takes MiniLM embeddings."""
    # NOTE: dim 128 (4 heads x 32), 4 layers: 1.28 M parameters. A (2, 16, 16) latent grid with
    # patch (1, 2, 2) is 128 tokens; see docs/model.md for a measured CPU step time.
    base = dict(
        in_channels=16,
        out_channels=16,
        num_heads=4,
        head_dim=32,
        ffn_dim=512,
        num_layers=4,
        text_dim=384,
        freq_dim=128,
        rope_max_seq_len=256,
    )
    return ModelConfig(**{**base, **overrides})


def videodit_wan21_1_3b_config(**overrides: Any) -> ModelConfig:
    """Wan2.1 T2V 1.3B: dim 1536 (12 x 128), ffn 8960, 30 layers, text_dim 4096."""
    base = dict(num_heads=12, head_dim=128, ffn_dim=8960, num_layers=30, text_dim=4096, freq_dim=256)
    return ModelConfig(**{**base, **overrides})


def videodit_wan21_14b_config(**overrides: Any) -> ModelConfig:
    """Wan2.1 T2V 14B: dim 5120 (40 x 128), ffn 13824, 40 layers, text_dim 4096."""
    base = dict(num_heads=40, head_dim=128, ffn_dim=13824, num_layers=40, text_dim=4096, freq_dim=256)
    return ModelConfig(**{**base, **overrides})


MODEL_CONFIGS = {
    "tiny": videodit_tiny_config,
    "demo": videodit_demo_config,
    "wan2.1-1.3b": videodit_wan21_1_3b_config,
    "wan2.1-14b": videodit_wan21_14b_config,
}


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The preset config registered under ``name`` ("tiny", "demo", "wan2.1-1.3b", "wan2.1-14b")."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model preset {name!r}; available: {sorted(MODEL_CONFIGS)}")
    return MODEL_CONFIGS[name](**overrides)
