"""Video autoencoders behind one protocol: the weight-free ``pixel`` one and Wan2.1's VAE.

Every autoencoder maps videos (B, 3, T, H, W) in [-1, 1] to latents (B, C, T', H', W') and
back. ``pixel`` folds p×p spatial (and optionally pt temporal) patches into channels: an exact,
weight-free bijection that lets the whole loop run on a CPU without downloading anything.
``wan`` wraps diffusers' ``AutoencoderKLWan`` loaded from a local folder and normalises its
latents per channel with the ``latents_mean``/``latents_std`` of its config, as Wan does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch


@runtime_checkable
class VideoAutoencoder(Protocol):
    """What training, caching and sampling need from an autoencoder."""

    latent_channels: int
    spatial_compression: int
    temporal_compression: int

    def latent_frames(self, num_frames: int) -> int:
        """Latent frame count for a video of ``num_frames`` frames."""
        ...

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> normalised latents (B, C, T', H', W')."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, T', H', W') -> video (B, 3, T, H, W) in [-1, 1]."""
        ...


@dataclass
class VAEConfig:
    """Which autoencoder turns videos into latents."""

    kind: Literal["pixel", "wan"] = "pixel"
    """pixel: weight-free space-to-depth; wan: diffusers AutoencoderKLWan from ``path``"""
    path: str = ""
    """wan: local folder with the VAE's config.json + safetensors (or a diffusers pipeline root)"""
    patch: int = 4
    """pixel: spatial patch size folded into channels"""
    temporal_patch: int = 1
    """pixel: temporal patch size folded into channels"""
    tiling: bool = False
    """wan: decode/encode in spatial tiles (lower memory for large videos)"""
    slicing: bool = False
    """wan: encode/decode a batch one sample at a time"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """wan: weight and compute dtype"""

    def validate(self) -> None:
        if self.patch < 1 or self.temporal_patch < 1:
            raise ValueError(
                f"vae.patch and vae.temporal_patch must be >= 1, got {self.patch} and {self.temporal_patch}"
            )


class PixelAutoencoder:
    """Space-to-depth: (B, 3, T, H, W) -> (B, 3·pt·p·p, T/pt, H/p, W/p), exactly invertible.

    Channels are ordered (rgb, pt, p_h, p_w). Values stay in [-1, 1].
    """

    def __init__(self, patch: int = 4, temporal_patch: int = 1) -> None:
        if patch < 1 or temporal_patch < 1:
            raise ValueError(f"pixel autoencoder patch sizes must be >= 1, got {patch=} {temporal_patch=}")
        self.patch = patch
        self.temporal_patch = temporal_patch
        self.latent_channels = 3 * temporal_patch * patch * patch
        self.spatial_compression = patch
        self.temporal_compression = temporal_patch

    def latent_frames(self, num_frames: int) -> int:
        if num_frames % self.temporal_patch:
            raise ValueError(
                f"pixel autoencoder: {num_frames} frames is not a multiple of "
                f"temporal_patch={self.temporal_patch}"
            )
        return num_frames // self.temporal_patch

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        p, pt = self.patch, self.temporal_patch
        if t % pt or h % p or w % p:
            raise ValueError(
                f"pixel autoencoder: video (T={t}, H={h}, W={w}) must be divisible by "
                f"temporal_patch={pt} and patch={p}; pick data sizes that are"
            )
        x = video.reshape(b, c, t // pt, pt, h // p, p, w // p, p)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # (B, C, pt, p, p, T', H', W')
        return x.reshape(b, c * pt * p * p, t // pt, h // p, w // p)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, ch, t, h, w = latents.shape
        p, pt = self.patch, self.temporal_patch
        if ch != self.latent_channels:
            raise ValueError(f"pixel autoencoder: expected {self.latent_channels} latent channels, got {ch}")
        x = latents.reshape(b, 3, pt, p, p, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, 3, T', pt, H', p, W', p)
        return x.reshape(b, 3, t * pt, h * p, w * p)

    def to(self, *args: object, **kwargs: object) -> PixelAutoencoder:
        """No weights: device moves are a no-op (kept for symmetry with the Wan VAE)."""
        return self


class WanVAE:
    """diffusers ``AutoencoderKLWan`` with per-channel latent normalisation ``(z − mean) / std``.

    Encoding uses the posterior mode (deterministic), as Wan's training code does by default.
    """

    def __init__(self, vae: torch.nn.Module) -> None:
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.latent_channels = int(cfg.z_dim)
        self.temporal_compression = int(cfg.scale_factor_temporal or 4)
        self.spatial_compression = int(cfg.scale_factor_spatial or 8)
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        tiling: bool = False,
        slicing: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> WanVAE:
        """Load from a local folder (the VAE folder itself, or a pipeline root with ``vae/``)."""
        from diffusers import AutoencoderKLWan

        root = Path(path)
        if (root / "vae" / "config.json").is_file():
            root = root / "vae"
        if not (root / "config.json").is_file():
            raise FileNotFoundError(
                f"Wan VAE: {path!s} holds no config.json. Set vae.path to a local folder with a diffusers "
                "AutoencoderKLWan (config.json + diffusion_pytorch_model.safetensors), "
                "e.g. the vae/ folder of "
                "Wan-AI/Wan2.1-T2V-1.3B-Diffusers, or use vae.kind=pixel"
            )
        vae = AutoencoderKLWan.from_pretrained(str(root), torch_dtype=dtype, use_safetensors=True)
        if tiling:
            vae.enable_tiling()
        if slicing:
            vae.enable_slicing()
        return cls(vae)

    def latent_frames(self, num_frames: int) -> int:
        f = self.temporal_compression
        if (num_frames - 1) % f:
            raise ValueError(
                f"Wan VAE: {num_frames} frames is not 1 + a multiple of {f}; use e.g. {1 + f * 4}"
            )
        return 1 + (num_frames - 1) // f

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def to(self, *args: object, **kwargs: object) -> WanVAE:
        self.vae.to(*args, **kwargs)
        return self

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.latent_frames(video.shape[2])
        posterior = self.vae.encode(video.to(self.device, self.dtype)).latent_dist
        z = posterior.mode().float()  # (B, C, T', H', W')
        return (z - self.mean.to(z.device)) / self.std.to(z.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)
        return self.vae.decode(z.to(self.device, self.dtype)).sample.float().clamp(-1, 1)


def build_vae(cfg: VAEConfig) -> PixelAutoencoder | WanVAE:
    """The autoencoder a :class:`VAEConfig` describes (on CPU; move it with ``.to``)."""
    if cfg.kind == "pixel":
        return PixelAutoencoder(cfg.patch, cfg.temporal_patch)
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    if not cfg.path:
        raise FileNotFoundError("vae.kind=wan needs vae.path=DIR (a local diffusers AutoencoderKLWan folder)")
    return WanVAE.from_pretrained(cfg.path, tiling=cfg.tiling, slicing=cfg.slicing, dtype=dtype)
