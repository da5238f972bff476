"""Loading anything sampleable: a vdiff training run (full or LoRA), a vdiff model folder, or a
diffusers Wan2.1 folder; then placing it on a device as a :class:`VideoPipeline`.

Nothing is downloaded and nothing read is executed: runs load through :mod:`vdiff.runs` (only
the chosen weights entry of a DCP checkpoint), model folders through safetensors, and a
diffusers folder's ``model_index.json`` is read as JSON only.

    cfg = SampleConfig(steps=20)
    pipe = load_pipeline("runs/tiny", cfg)
    videos = pipe(["a red circle moving left"], seeds=[0], **cfg.loop_options())
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from vdiff.config import ConfigError, config_from_dict, read_yaml_mapping, read_yaml_section
from vdiff.encoders import TextEncoderConfig, VAEConfig, VideoAutoencoder
from vdiff.runs import Weights, load_run_model
from vdiff.sampling.config import SampleConfig, torch_dtype
from vdiff.sampling.distributed import ParallelGroups
from vdiff.sampling.pipeline import VideoPipeline, latent_shape

Components = tuple[torch.nn.Module, Any, VideoAutoencoder]
"""(transformer, text encoder, autoencoder)"""


def model_kind(path: Path) -> str:
    """``"run"`` (vdiff training run), ``"diffusers"`` (Wan2.1 folder) or ``"model"`` (a transformer)."""
    if (path / "checkpoints").is_dir() and (path / "config.yaml").is_file():
        return "run"
    if (path / "model_index.json").is_file() or (path / "transformer" / "config.json").is_file():
        return "diffusers"
    if (path / "config.json").is_file():
        return "model"
    raise FileNotFoundError(
        f"--model {path}: not a vdiff training run (config.yaml + checkpoints/), a diffusers Wan2.1 folder "
        "(model_index.json, transformer/, vae/, text_encoder/, tokenizer/) or a model folder "
        "(config.json + weights)"
    )


def check_pipeline_index(path: Path) -> None:
    """Refuse diffusers folders whose ``model_index.json`` describes what vdiff cannot sample right."""
    index_path = path / "model_index.json"
    if not index_path.is_file():
        return
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--model {path}: model_index.json is not valid JSON: {e}") from e

    def used(key: str) -> bool:
        value = index.get(key)
        return bool(value) and value != [None, None]

    # NOTE: Wan2.2 A14B switches to a second expert below a timestep boundary, and Wan2.2 TI2V
    # uses per-token timesteps; sampling those with one transformer would give wrong videos.
    if used("transformer_2") or index.get("boundary_ratio") is not None:
        raise ValueError(
            f"--model {path}: a two-expert Wan2.2 folder (transformer_2 / boundary_ratio); vdiff samples "
            "Wan2.1 text-to-video folders (one transformer) only"
        )
    if index.get("expand_timesteps"):
        raise ValueError(
            f"--model {path}: expand_timesteps=true (Wan2.2 TI2V per-token timesteps) is not supported; "
            "vdiff samples Wan2.1 text-to-video folders"
        )
    name = index.get("_class_name")
    if name is not None and name != "WanPipeline":
        raise ValueError(
            f"--model {path}: model_index.json is a {name}, expected a WanPipeline (text-to-video)"
        )


def load_components(path: str | Path, cfg: SampleConfig) -> Components:
    """(transformer, text encoder, autoencoder) on CPU, from ``path``; nothing is downloaded."""
    from vdiff.encoders import build_text_encoder, build_vae
    from vdiff.models import load_model

    path = Path(path)
    kind = model_kind(path)
    if kind == "run":
        return load_run(path, weights=cfg.weights, step=cfg.checkpoint_step)
    if kind == "diffusers":
        return load_wan_folder(path, cfg)
    return load_model(path), build_text_encoder(cfg.text), build_vae(cfg.vae)


def load_wan_folder(path: Path, cfg: SampleConfig) -> Components:
    """The components of a diffusers Wan2.1 folder; ``cfg.text.dtype`` and ``cfg.vae.*`` apply."""
    from vdiff.encoders import TextEncoder, WanVAE
    from vdiff.models import load_model

    check_pipeline_index(path)
    transformer = load_model(path / "transformer" if (path / "transformer").is_dir() else path)
    # NOTE: Wan2.1 conditions on 512 UMT5 tokens; its tokenizer lives in tokenizer/. The
    # UMT5-XXL encoder is ~11 GB in float32: text.dtype=bfloat16 halves that.
    text = TextEncoder.from_pretrained(
        path / "text_encoder", max_length=512, dtype=torch_dtype(cfg.text.dtype)
    )
    # NOTE: vae.tiling decodes in spatial tiles (diffusers' AutoencoderKLWan tiling): less memory.
    vae = WanVAE.from_pretrained(
        path, tiling=cfg.vae.tiling, slicing=cfg.vae.slicing, dtype=torch_dtype(cfg.vae.dtype)
    )
    return transformer, text, vae


def run_encoders(path: str | Path) -> tuple[TextEncoderConfig, VAEConfig]:
    """The ``text`` and ``vae`` sections of run ``path``'s ``config.yaml`` (defaults where absent)."""
    cfg_path = Path(path) / "config.yaml"
    raw = read_yaml_mapping(cfg_path)
    try:
        text = config_from_dict(TextEncoderConfig, raw.get("text") or {}, prefix="text.")
        vae = config_from_dict(VAEConfig, raw.get("vae") or {}, prefix="vae.")
    except ValueError as e:
        raise ConfigError(f"{cfg_path}: {e}") from e
    return text, vae


STUDENT_KEYS = ("steps", "guidance", "shift", "sampler", "schedule")
"""the sampling keys a distilled student run fixes unless given on the command line"""


def student_settings(path: str | Path) -> dict[str, Any] | None:
    """The sampling a distilled student run (``vdiff distill``) was trained for, else None.

    From its ``config.yaml``'s ``distill`` section: ``distill.student_steps`` Euler steps on the
    uniform grid (:mod:`vdiff.training.distill`'s student levels) with ``distill.shift``, guidance 1
    (the teacher's guidance is folded into the student).
    """
    path = Path(path)
    cfg_path = path / "config.yaml"
    if not (path.is_dir() and cfg_path.is_file() and (path / "checkpoints").is_dir()):
        return None
    section = read_yaml_section(cfg_path, "distill")
    if not isinstance(section, dict):
        return None
    steps, shift = section.get("student_steps"), section.get("shift")
    if not isinstance(steps, int) or steps < 1 or not isinstance(shift, int | float) or shift <= 0:
        raise ConfigError(
            f"{cfg_path}: distill.student_steps must be an integer >= 1 and distill.shift a number > 0; "
            f"got {steps!r} and {shift!r}"
        )
    return {"steps": steps, "guidance": 1.0, "shift": float(shift), "sampler": "euler", "schedule": "uniform"}


def with_student_settings(
    cfg: SampleConfig, path: str | Path, *, given: Collection[str] = ()
) -> tuple[SampleConfig, dict[str, Any] | None]:
    """``cfg`` with a student run's :func:`student_settings`, except the keys in ``given`` (the user's)."""
    settings = student_settings(path)
    if settings is None:
        return cfg, None
    chosen = {k: v for k, v in settings.items() if k not in given}
    new = dataclasses.replace(cfg, **chosen)
    new.validate()
    return new, chosen


def load_run(path: str | Path, *, weights: Weights, step: int) -> Components:
    """The model (``weights``: "ema", "model" or "auto") and encoders of the vdiff training run ``path``.

    ``step`` -1 takes the latest complete checkpoint. A LoRA run's adapters are folded into its
    base (:func:`vdiff.runs.load_run_model`); only the ``weights`` entry of the DCP checkpoint is
    read, never the optimizer state.
    """
    from vdiff.encoders import build_text_encoder, build_vae

    text, vae = run_encoders(path)
    trained = load_run_model(path, weights=weights, step=None if step < 0 else step)
    return trained.model, build_text_encoder(text), build_vae(vae)


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda:LOCAL_RANK when CUDA is available, else cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def make_pipeline(
    transformer: torch.nn.Module,
    text_encoder: Any,
    vae: VideoAutoencoder,
    *,
    cfg: SampleConfig,
    groups: ParallelGroups,
) -> VideoPipeline:
    """Move the components to ``cfg.device`` (transformer in ``cfg.dtype``), shard the transformer's
    tokens over ``groups.layout`` when sequence-parallel, and assemble the pipeline."""
    device = pick_device(cfg.device)
    transformer = transformer.to(device, torch_dtype(cfg.dtype))
    if groups.layout is not None:
        from vdiff.parallel.sequence import apply_sequence_parallel

        apply_sequence_parallel(transformer, groups.layout)
    return VideoPipeline(
        transformer=transformer, text_encoder=text_encoder.to(device), vae=vae.to(device), groups=groups
    )


def check_video_size(pipe: VideoPipeline, cfg: SampleConfig) -> None:
    """Raise before sampling when the autoencoder or the transformer cannot take the video size.

    The autoencoder fixes which frame counts and sizes have latents; the transformer's patch
    size must divide those latents and its input channels must match the autoencoder's.
    """
    shape = latent_shape(pipe.vae, frames=cfg.frames, height=cfg.height, width=cfg.width)  # (C, T', H', W')
    grid = getattr(getattr(pipe.transformer, "embed", None), "grid", None)
    if grid is not None:
        try:
            grid((1, *shape))
        except ValueError as e:
            raise ConfigError(
                f"frames={cfg.frames} height={cfg.height} width={cfg.width} give latents {shape}: {e}"
            ) from e


def load_pipeline(
    path: str | Path, cfg: SampleConfig, *, groups: ParallelGroups | None = None
) -> VideoPipeline:
    """The :class:`VideoPipeline` of what ``path`` holds, on ``cfg.device``, checked for ``cfg``'s size."""
    transformer, text, vae = load_components(path, cfg)
    pipe = make_pipeline(transformer, text, vae, cfg=cfg, groups=groups or ParallelGroups())
    check_video_size(pipe, cfg)
    return pipe
