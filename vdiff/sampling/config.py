"""The typed configs of the sampling engine: a sampling run, its step cache and attention policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from vdiff.attention.policy import AttentionPolicy
from vdiff.config import ConfigError
from vdiff.encoders import TextEncoderConfig, VAEConfig
from vdiff.parallel.config import ParallelConfig


@dataclass
class StepCacheConfig:
    """TeaCache-style step caching: reuse the transformer's residual while its input barely moves."""

    enabled: bool = False
    """skip the transformer blocks on steps whose timestep-modulated input changed little"""
    threshold: float = 0.1
    """recompute once the accumulated relative L1 change of the modulated input reaches this"""

    def validate(self) -> None:
        if self.threshold < 0:
            raise ConfigError(f"cache.threshold must be >= 0, got {self.threshold}")


def dense_policy() -> AttentionPolicy:
    """The default sampling attention: dense sdpa on every step."""
    return AttentionPolicy(backend="sdpa", dense_first_steps=1, dense_last_steps=1)


@dataclass
class SampleConfig:
    """How videos are sampled; every key can be given on the command line as key=value."""

    seed: int = 0
    """seed of video 0 of prompt 0; video i of prompt p uses seed + p * videos_per_prompt + i"""
    steps: int = 30
    """denoising steps"""
    guidance: float = 5.0
    """classifier-free guidance scale; 1 disables guidance (no unconditional pass)"""
    negative_prompt: str = ""
    """the unconditional branch's prompt"""
    frames: int = 16
    """frames per video"""
    height: int = 32
    """frame height in pixels"""
    width: int = 32
    """frame width in pixels"""
    fps: float = 8.0
    """frame rate of the written mp4 files"""
    sampler: Literal["euler", "unipc"] = "euler"
    """flow-matching solver: diffusers' FlowMatchEulerDiscreteScheduler or UniPCMultistepScheduler"""
    shift: float = 3.0
    """time shift of the sampling schedule (SD3/Wan; larger spends more steps at high noise)"""
    schedule: Literal["default", "uniform"] = "default"
    """noise levels: default = the sampler's (steps levels from 1 to 0.001, then 0); uniform = 1, 1 − 1/steps,
    …, 1/steps, then 0 (both shifted): a distilled student's grid (euler only)"""
    videos_per_prompt: int = 1
    """videos written per prompt (VBench uses 5)"""
    batch_size: int = 1
    """videos denoised together"""
    weights: Literal["ema", "model"] = "ema"
    """which weights of a vdiff training run to load"""
    checkpoint_step: int = -1
    """training step of the checkpoint to load from a run; -1 takes the latest"""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """compute dtype of the transformer"""
    device: str = "auto"
    """torch device; auto picks cuda:LOCAL_RANK when available, else cpu"""
    save_arrays: bool = False
    """also write each decoded video as float32 .npy (T, H, W, 3) in [-1, 1] for exact comparisons"""
    progress: bool = True
    """show a progress bar on rank 0"""
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """text encoder of a bare model folder (runs and Wan folders bring theirs; text.dtype applies to Wan's)"""
    vae: VAEConfig = field(default_factory=VAEConfig)
    """autoencoder of a bare model folder; vae.tiling / slicing / dtype also apply to a Wan2.1 folder's VAE"""
    cache: StepCacheConfig = field(default_factory=StepCacheConfig)
    """TeaCache-style step caching"""
    attention: AttentionPolicy = field(default_factory=dense_policy)
    """self-attention backend of the middle steps (e.g. sparse_sage) and the dense first/last steps"""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """ulysses, ring and cfg degrees (their product must equal the number of processes)"""

    def validate(self) -> None:
        for name in ("steps", "frames", "height", "width", "videos_per_prompt", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.guidance < 1:
            raise ConfigError(f"guidance must be >= 1 (1 disables guidance), got {self.guidance}")
        if self.shift <= 0:
            raise ConfigError(f"shift must be > 0, got {self.shift}")
        if self.fps <= 0:
            raise ConfigError(f"fps must be > 0, got {self.fps}")
        if self.checkpoint_step < -1:
            raise ConfigError(
                f"checkpoint_step must be >= 0, or -1 for the latest; got {self.checkpoint_step}"
            )
        if self.schedule == "uniform" and self.sampler != "euler":
            raise ConfigError(
                f"schedule=uniform (a distilled student's grid) needs sampler=euler, got {self.sampler}"
            )
        if self.parallel.cfg not in (1, 2):
            raise ConfigError(f"parallel.cfg must be 1 or 2, got {self.parallel.cfg}")
        if self.parallel.cfg == 2 and self.guidance == 1:
            raise ConfigError("parallel.cfg=2 splits the guidance branches; it needs guidance > 1")

    def loop_options(self) -> dict[str, Any]:
        """The keywords of ``VideoPipeline.__call__`` this config sets (all but seeds and progress)."""
        return {
            "negative_prompt": self.negative_prompt,
            "steps": self.steps,
            "guidance": self.guidance,
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "sampler": self.sampler,
            "shift": self.shift,
            "schedule": self.schedule,
            "cache": self.cache,
            "attention": self.attention,
        }


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` -> the torch dtype."""
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
