"""What ``vdiff train`` (``pipelines/train.py``, the loop itself) builds on: its config, model, checks,
resume, logging and validation videos.

    cfg = load_config(TrainConfig, "configs/tiny.yaml", ["train.steps=10"])
    model = apply_lora(base_model(cfg), cfg.lora)          # lora.rank > 0
    state, folder = resume_checkpoint(cfg.resume, RUN / "checkpoints", load=..., warn=True)
"""

from vdiff.training.checks import (
    check_before_work,
    check_cache,
    check_paths,
    check_ring_backend,
    check_shapes,
    check_weights_exist,
)
from vdiff.training.config import (
    LORA_TARGETS,
    RENAMED_KEYS,
    CheckpointConfig,
    EMAConfig,
    FlowConfig,
    LoopConfig,
    LoRAConfig,
    TrainConfig,
    renamed_hint,
)
from vdiff.training.metrics import (
    BAD_SAMPLES_FILE,
    METRICS_FILE,
    Throughput,
    bad_samples_over_ranks,
    max_memory_mb,
    max_over_ranks,
    open_tensorboard,
    report_bad_samples,
    write_bad_samples,
    write_metrics,
)
from vdiff.training.model import apply_lora, base_model, check_lora_can_learn
from vdiff.training.resume import cut_metrics, prepare_run, resume_checkpoint, start_branch
from vdiff.training.validation import validation_videos, write_videos

__all__ = [
    "BAD_SAMPLES_FILE",
    "LORA_TARGETS",
    "METRICS_FILE",
    "RENAMED_KEYS",
    "CheckpointConfig",
    "EMAConfig",
    "FlowConfig",
    "LoRAConfig",
    "LoopConfig",
    "Throughput",
    "TrainConfig",
    "apply_lora",
    "bad_samples_over_ranks",
    "base_model",
    "check_before_work",
    "check_cache",
    "check_lora_can_learn",
    "check_paths",
    "check_ring_backend",
    "check_shapes",
    "check_weights_exist",
    "cut_metrics",
    "max_memory_mb",
    "max_over_ranks",
    "open_tensorboard",
    "prepare_run",
    "renamed_hint",
    "report_bad_samples",
    "resume_checkpoint",
    "start_branch",
    "validation_videos",
    "write_bad_samples",
    "write_metrics",
    "write_videos",
]
