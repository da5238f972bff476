"""Frozen encoders: video autoencoders (pixel, Wan2.1 VAE) and text encoders (MiniLM, UMT5, ...)."""

from vdiff.encoders.text import TextEncoder, TextEncoderConfig, build_text_encoder, minilm_path
from vdiff.encoders.vae import PixelAutoencoder, VAEConfig, VideoAutoencoder, WanVAE, build_vae

__all__ = [
    "PixelAutoencoder",
    "TextEncoder",
    "TextEncoderConfig",
    "VAEConfig",
    "VideoAutoencoder",
    "WanVAE",
    "build_text_encoder",
    "build_vae",
    "minilm_path",
]
