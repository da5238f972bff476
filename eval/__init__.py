"""VBench-style evaluators: metric registry, VBench formats and scoring, reports.

The pipeline-independent entry point is :func:`evaluate`; :func:`vbench_video_name` names
sampled videos the way VBench expects them.
"""

from eval.config import EvalConfig, WeightsConfig
from eval.registry import (
    Metric,
    MissingDependencyError,
    MissingWeightsError,
    UnscorableVideoError,
    VideoSample,
    available_metrics,
    build_metric,
    register_metric,
)
from eval.runner import evaluate
from eval.vbench import load_prompts, prompt_from_filename, vbench_scores, vbench_video_name

__all__ = [
    "EvalConfig",
    "Metric",
    "MissingDependencyError",
    "MissingWeightsError",
    "UnscorableVideoError",
    "VideoSample",
    "WeightsConfig",
    "available_metrics",
    "build_metric",
    "evaluate",
    "load_prompts",
    "prompt_from_filename",
    "register_metric",
    "vbench_scores",
    "vbench_video_name",
]
