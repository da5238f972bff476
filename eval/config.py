"""Eval config: which dimensions, which substitutes, where the weights are (local paths only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vdiff.config import ConfigError

WEIGHT_FREE_DIMENSIONS = ["temporal_flickering", "dynamic_degree", "motion_smoothness"]


@dataclass
class WeightsConfig:
    """Local weight paths; an empty value falls back to the environment variable named in each doc."""

    dino: str = ""
    """transformers DINO ViT-B/16 folder (facebook/dino-vitb16) for subject_consistency; env VDIFF_DINO"""
    clip_b32: str = ""
    """transformers CLIP ViT-B/32 folder for background_consistency; env VDIFF_CLIP_B32"""
    clip_l14: str = ""
    """transformers CLIP ViT-L/14 folder for aesthetic_quality, overall_consistency; env VDIFF_CLIP_L14"""
    aesthetic_head: str = ""
    """LAION aesthetic head sa_0_4_vit_l_14_linear.pth (nn.Linear(768, 1)); env VDIFF_AESTHETIC_HEAD"""
    musiq: str = ""
    """MUSIQ-SPAQ musiq_spaq_ckpt-358bb6af.pth for imaging_quality (needs pyiqa); env VDIFF_MUSIQ"""
    raft: str = ""
    """VBench's RAFT raft-things.pth for dynamic_degree and the static filter; env VDIFF_RAFT"""
    i3d: str = ""
    """StyleGAN-V I3D TorchScript detector i3d_torchscript.pt for fvd; env VDIFF_I3D"""
    clip_b32_openai: str = ""
    """OpenAI CLIP ViT-B-32.pt (or its state dict) for appearance_style; env VDIFF_CLIP_B32_OPENAI"""
    clip_bpe: str = ""
    """CLIP BPE vocabulary bpe_simple_vocab_16e6.txt.gz for appearance_style and ViCLIP; env VDIFF_CLIP_BPE"""
    viclip: str = ""
    """ViClip-InternVid-10M-FLT.pth for overall_consistency, temporal_style; env VDIFF_VICLIP"""
    amt_s: str = ""
    """AMT-S amt-s.pth for motion_smoothness (unset: the labelled flow substitute); env VDIFF_AMT_S"""


@dataclass
class EvalConfig:
    """``vdiff eval``: VBench-style scores for a folder of videos."""

    dimensions: list[str] = field(default_factory=lambda: list(WEIGHT_FREE_DIMENSIONS))
    """dimensions to score (vdiff eval --help lists them)"""
    flow: Literal["dis", "farneback"] = "dis"
    """weight-free flow replacing RAFT (dynamic_degree, static filter, without weights.raft) and AMT"""
    dynamic_degree_commit: str = "f9d345a2064f90709501680c7954945149329d14"
    """VBench commit whose dynamic_degree threshold to use: f9d345a2 (current), 11abda97 (July 2024)"""
    videos_per_prompt: int = 5
    """with a VBench prompt suite, how many videos {prompt}-{i}.mp4 to expect per prompt"""
    batch_size: int = 16
    """frames per batch through a feature model"""
    device: str = "cpu"
    """torch device for feature models"""
    fvd_reference: str = ""
    """folder of reference videos for fvd"""
    fvd_frames: int = 16
    """consecutive frames per video fed to I3D for fvd (StyleGAN-V uses 16)"""
    report_frames: int = 6
    """frames per video shown in the report's strip"""
    workers: int = 1
    """forked processes scoring videos in parallel (same numbers as 1; torch models: as 1 thread)"""
    bootstrap_resamples: int = 1000
    """bootstrap resamples of the videos for each dimension's 95% confidence interval (0: none)"""
    flow_cache_mb: int = 1024
    """memory per video (and per worker) for optical flows shared between dimensions (0: none)"""
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    """local model weights"""

    def validate(self) -> None:
        if self.videos_per_prompt < 1:
            raise ConfigError(f"videos_per_prompt must be >= 1, got {self.videos_per_prompt}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.fvd_frames < 1:
            raise ConfigError(f"fvd_frames must be >= 1, got {self.fvd_frames}")
        if self.report_frames < 1:
            raise ConfigError(f"report_frames must be >= 1, got {self.report_frames}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.workers > 1 and self.device != "cpu":
            raise ConfigError(
                f"workers={self.workers} forks processes, which cannot share device {self.device!r}; "
                "use workers=1 with a GPU"
            )
        if self.bootstrap_resamples < 0:
            raise ConfigError(f"bootstrap_resamples must be >= 0, got {self.bootstrap_resamples}")
        if self.flow_cache_mb < 0:
            raise ConfigError(f"flow_cache_mb must be >= 0, got {self.flow_cache_mb}")
        if not self.dimensions:
            raise ConfigError("dimensions is empty; name at least one (vdiff eval --help lists them)")
