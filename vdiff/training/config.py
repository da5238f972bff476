"""The config of a training run (``vdiff train CONFIG key=value``): :class:`TrainConfig` and its sections.

The sections a training run shares with other commands live with their components
(``model``: :class:`vdiff.models.ModelConfig`, ``data``, ``optim``, ``parallel``, ``vae``, ``text``);
the ones only training reads are here. ``RUN/config.yaml`` reloads with
``load_config(TrainConfig, RUN / "config.yaml")``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vdiff.config import ConfigError
from vdiff.data import DataConfig
from vdiff.encoders import TextEncoderConfig, VAEConfig
from vdiff.models import ModelConfig
from vdiff.optim import OptimConfig
from vdiff.parallel.config import ParallelConfig


@dataclass
class FlowConfig:
    """How training draws noise levels and drops captions."""

    logit_mean: float = 0.0
    """mean of the logit-normal σ distribution"""
    logit_std: float = 1.0
    """standard deviation of the logit-normal σ distribution"""
    shift: float = 0.0
    """time shift s of σ; <= 0 derives it from the latent token count (SD3 sqrt rule)"""
    base_tokens: int = 32760
    """token count at which the derived shift equals base_shift (Wan2.1 480p, 81 frames)"""
    base_shift: float = 3.0
    """derived shift at base_tokens (Wan2.1 uses 3 at 480p)"""
    caption_dropout: float = 0.1
    """probability of training a sample on the empty prompt (for classifier-free guidance)"""

    def validate(self) -> None:
        if self.logit_std <= 0 or self.base_tokens < 1 or self.base_shift <= 0:
            raise ConfigError(
                f"flow: need logit_std > 0, base_tokens >= 1 and base_shift > 0; got logit_std="
                f"{self.logit_std}, base_tokens={self.base_tokens}, base_shift={self.base_shift}"
            )
        if not 0 <= self.caption_dropout <= 1:
            raise ConfigError(f"flow.caption_dropout must be in [0, 1], got {self.caption_dropout}")


@dataclass
class EMAConfig:
    """Exponential moving average of the weights (the model to sample from)."""

    enabled: bool = True
    """keep an EMA copy of the model"""
    decay: float = 0.999
    """ema ← decay·ema + (1 − decay)·weights after every step"""

    def validate(self) -> None:
        if not 0 <= self.decay <= 1:
            raise ConfigError(f"ema.decay must be in [0, 1], got {self.decay}")


@dataclass
class LoopConfig:
    """Length, batch and logging of the run."""

    steps: int = 100
    """optimizer steps in total (the cosine schedule ends here)"""
    max_minutes: float = 0.0
    """stop (with a checkpoint) after this many minutes of wall time; 0 = no limit"""
    batch_size: int = 4
    """GLOBAL batch size (split across data-parallel ranks)"""
    log_every: int = 10
    """append a metrics.jsonl row every this many steps"""
    warmup_log_steps: int = 2
    """first steps (of this process) left out of samples_per_s / tokens_per_s (compile, allocator, caches)"""
    progress: bool = True
    """tqdm progress bar on rank 0 (stderr); false prints each metrics row instead"""
    tensorboard: bool = True
    """also write the metrics as TensorBoard scalars to RUN/tb/ (needs the tensorboard package)"""
    sample_every: int = 0
    """every this many steps, write validation videos to RUN/samples/step_{step:08d}/; 0 = never"""
    sample_prompts: list[str] = field(default_factory=lambda: ["a red circle moving left"])
    """prompts of the validation videos (one mp4 each)"""
    sample_steps: int = 20
    """Euler steps of the validation sampler (no guidance)"""
    bf16: bool = False
    """bfloat16 autocast for the forward pass (weights and optimizer stay float32)"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:1, ..."""
    peak_tflops: float = 0.0
    """dense bf16 TFLOP/s of one device for the mfu metric; 0: by GPU name (A100/H100/H200/L40S/RTX 4090)"""

    def validate(self) -> None:
        for name in ("steps", "batch_size", "log_every", "sample_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_minutes", "warmup_log_steps", "sample_every", "peak_tflops"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0 (0: off), got {getattr(self, name)}")
        if self.sample_every > 0 and not self.sample_prompts:
            raise ConfigError("train.sample_every > 0 needs at least one train.sample_prompts entry")


@dataclass
class CheckpointConfig:
    """When checkpoints are written (to RUN/checkpoints/step_{step:08d}/)."""

    every: int = 50
    """checkpoint every this many steps (and at the end); 0 = only at the end"""

    def validate(self) -> None:
        if self.every < 0:
            raise ConfigError(f"checkpoint.every must be >= 0 (0: only at the end), got {self.every}")


# NOTE: peft matches a name when the module's full name ends with ".<name>": these pick the
# DiT blocks' attention projections and FFN linears (vdiff/models/layers.py), not the embedders'.
LORA_TARGETS = (
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "ffn.fc1",
    "ffn.fc2",
)


@dataclass
class LoRAConfig:
    """LoRA fine-tuning through peft: only low-rank adapters on the DiT's linears train."""

    rank: int = 0
    """adapter rank r; 0 = off (every weight trains)"""
    alpha: float = 16.0
    """the adapter's update is (alpha / rank) · B·A"""
    dropout: float = 0.0
    """dropout on the adapters' input"""
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """module names (peft's rule: the full name ends with .NAME) that get adapters"""
    merge_to: str = ""
    """after training, write base + adapters merged into one vdiff model folder here; empty = don't"""

    def validate(self) -> None:
        if self.rank < 0 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ConfigError(
                f"lora: need rank >= 0 (0: off), alpha > 0 and 0 <= dropout < 1; got rank={self.rank}, "
                f"alpha={self.alpha}, dropout={self.dropout}"
            )


@dataclass
class TrainConfig:
    """Everything a training run needs; `vdiff train --help` lists each key."""

    run_dir: str = "runs/train"
    """run folder (config.yaml, metrics.jsonl, tb/, samples/, checkpoints/)"""
    resume: str = "auto"
    """auto: latest complete checkpoint in run_dir if any; none: start fresh; or a step_{step:08d} folder"""
    seed: int = 0
    """seed of model init, data order and every noise draw"""
    init_from: str = ""
    """model folder (vdiff or diffusers Wan2.1) whose weights start the run (full or LoRA); empty: seed"""
    model: ModelConfig = field(default_factory=ModelConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def validate(self) -> None:
        if not self.run_dir.strip():
            raise ConfigError("run_dir is empty; name the run folder")
        if not self.resume.strip():
            raise ConfigError("resume is empty; use auto, none or a step_{step:08d} checkpoint folder")


# NOTE: keys renamed when the config followed the names; an old key gets a pointer, not
# only "unknown key".
RENAMED_KEYS = {
    "train.out": "run_dir",
    "train.resume": "resume",
    "train.seed": "seed",
    "train.ckpt_every": "checkpoint.every",
}


def renamed_hint(message: str) -> str:
    """`` (KEY is now NEW)`` when a config error names a key in :data:`RENAMED_KEYS`."""
    m = re.match(r"unknown config key ([\w.]+)", message)
    if m and m.group(1) in RENAMED_KEYS:
        return f" ({m.group(1)} is now {RENAMED_KEYS[m.group(1)]})"
    return ""
