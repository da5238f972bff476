"""Video diffusion transformers: ``VideoDiT`` (Wan2.1-compatible), builders, save/load and Wan conversion.

Public API::

    model = videodit_tiny()                       # or build_model("demo"), build_model(cfg, device="meta")
    v = model(x, timestep, context)               # (B, C, T, H, W), (B,), (B, L, text_dim) -> like x
    save_model(model, "out/")                     # config.json + model.safetensors
    save_model(model, "out/", to="diffusers")     # what WanTransformer3DModel.from_pretrained reads
    model = load_model("out/")                    # a vdiff or a diffusers WanTransformer3DModel folder
"""

from vdiff.models.config import MODEL_CONFIGS, ModelConfig, model_config
from vdiff.models.dit import (
    Embedded,
    Embedder,
    OutputHead,
    VideoDiT,
    build_model,
    videodit_demo,
    videodit_tiny,
    videodit_wan21_1_3b,
    videodit_wan21_14b,
)
from vdiff.models.io import convert_checkpoint, load_model, read_config, save_model
from vdiff.models.layers import Attention, DiTBlock

__all__ = [
    "MODEL_CONFIGS",
    "Attention",
    "DiTBlock",
    "Embedded",
    "Embedder",
    "ModelConfig",
    "OutputHead",
    "VideoDiT",
    "build_model",
    "convert_checkpoint",
    "load_model",
    "model_config",
    "read_config",
    "save_model",
    "videodit_demo",
    "videodit_tiny",
    "videodit_wan21_1_3b",
    "videodit_wan21_14b",
]
