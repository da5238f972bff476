"""The sampling engine: text -> video with anything sampleable, as library functions.

* :mod:`vdiff.sampling.config`: :class:`SampleConfig` (every ``vdiff sample`` key),
  :class:`StepCacheConfig`, :func:`dense_policy`.
* :mod:`vdiff.sampling.pipeline`: :class:`VideoPipeline`, whose ``__call__`` is the denoising
  loop with classifier-free guidance, written out step by step as in diffusers; the solvers
  (:func:`make_scheduler`), seeded noise (:func:`initial_noise`) and :func:`to_uint8`.
* :mod:`vdiff.sampling.cache`: TeaCache-style step caching (:class:`StepCache`, :func:`cached_forward`).
* :mod:`vdiff.sampling.step_attention`: the attention backend of each step (:func:`set_step_attention`).
* :mod:`vdiff.sampling.loading`: a training run (full or LoRA), a vdiff model folder or a
  diffusers Wan2.1 folder -> a pipeline on a device (:func:`load_pipeline`).
* :mod:`vdiff.sampling.distributed`: cfg-parallel and sequence-parallel process groups.

    from vdiff.sampling import SampleConfig, load_pipeline

    cfg = SampleConfig(steps=20, guidance=4.0)
    pipe = load_pipeline("runs/tiny", cfg)
    videos = pipe(["a red circle moving left"], seeds=[0], **cfg.loop_options())  # (1, 3, T, H, W)

``vdiff sample`` (``pipelines/sample.py``) adds the command line, prompt files, VBench file
names and the torchrun process setup around this engine.
"""

from vdiff.sampling.cache import StepCache, cached_forward
from vdiff.sampling.config import SampleConfig, StepCacheConfig, dense_policy, torch_dtype
from vdiff.sampling.distributed import ParallelGroups, setup_distributed
from vdiff.sampling.loading import (
    check_pipeline_index,
    check_video_size,
    load_components,
    load_pipeline,
    load_run,
    make_pipeline,
    model_kind,
    pick_device,
)
from vdiff.sampling.pipeline import VideoPipeline, initial_noise, latent_shape, make_scheduler, to_uint8
from vdiff.sampling.step_attention import restore_attention, set_step_attention

__all__ = [
    "ParallelGroups",
    "SampleConfig",
    "StepCache",
    "StepCacheConfig",
    "VideoPipeline",
    "cached_forward",
    "check_pipeline_index",
    "check_video_size",
    "dense_policy",
    "initial_noise",
    "latent_shape",
    "load_components",
    "load_pipeline",
    "load_run",
    "make_pipeline",
    "make_scheduler",
    "model_kind",
    "pick_device",
    "restore_attention",
    "set_step_attention",
    "setup_distributed",
    "to_uint8",
    "torch_dtype",
]
