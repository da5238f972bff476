"""Checks a training config passes before any work starts: each refusal is one line naming the key.

Bad values stop ``vdiff train`` before a weight is loaded or a file written (exit 2), so a run
that starts has what it needs: weight folders, data, a resumable checkpoint, shapes that fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vdiff.checkpoint import checkpoint_problem
from vdiff.config import ConfigError, to_dict
from vdiff.data import list_shards
from vdiff.training.config import TrainConfig


def check_before_work(cfg: TrainConfig) -> None:
    """The checks that need neither data nor model: weight folders, ring attention's backend, paths."""
    check_weights_exist(cfg)
    check_ring_backend(cfg)
    check_paths(cfg)


def check_weights_exist(cfg: TrainConfig) -> None:
    """Every weight folder the config names must exist (checked before any work starts)."""
    named = [("init_from", cfg.init_from), ("text.path", cfg.text.path)]
    if cfg.vae.kind == "wan":
        named.append(("vae.path", cfg.vae.path or "(empty)"))
    missing = [f"{key}={path}" for key, path in named if path and not Path(path).exists()]
    if missing:
        raise ConfigError(
            f"no such weight folder: {', '.join(missing)}; download the weights there or set the key(s) "
            "to where they are"
        )


def check_ring_backend(cfg: TrainConfig) -> None:
    """Ring attention trains through its own dense block kernels and their backward only."""
    att = cfg.model.attention
    other = sorted({att.backend, *att.per_layer.values()} - {"sdpa"})
    if cfg.parallel.ring > 1 and other:
        # NOTE: the ring's backward is the dense one; under a sparse forward it would be the
        # gradient of another function.
        raise ConfigError(
            f"parallel.ring={cfg.parallel.ring} with attention backend {', '.join(other)}: ring attention "
            "trains with dense attention only; set model.attention.backend=sdpa, or use parallel.ulysses "
            "for sequence parallelism with that backend"
        )


def check_paths(cfg: TrainConfig) -> None:
    """Every path the config names is of the right kind (checked before any work starts)."""
    run = Path(cfg.run_dir)
    if run.exists() and not run.is_dir():
        raise ConfigError(f"run_dir={run} is a file, not a folder; name the run's folder")
    if cfg.lora.merge_to and Path(cfg.lora.merge_to).is_file():
        raise ConfigError(f"lora.merge_to={cfg.lora.merge_to} is a file; name a folder for the merged model")
    if not cfg.data.path:
        raise ConfigError(
            "data.path is empty; set it to `vdiff curate` or `vdiff cache` output (or .tar shards)"
        )
    list_shards(cfg.data.path)  # NOTE: a FileNotFoundError that names data.path
    if cfg.resume not in ("auto", "none"):
        problem = checkpoint_problem(Path(cfg.resume))
        if problem is not None:
            raise ConfigError(
                f"resume={cfg.resume}: {problem}; give a complete RUN/checkpoints/step_{{step:08d}} folder, "
                "auto (the run's newest complete one) or none"
            )


def check_cache(cfg: TrainConfig, made_with: dict[str, Any]) -> None:
    """Cached latents must come from the configured VAE and text encoder (sampling decodes with them)."""
    for section in ("vae", "text"):
        want = to_dict(getattr(cfg, section))
        if section in made_with and made_with[section] != want:
            raise ConfigError(
                f"data.path={cfg.data.path} was cached with {section}={made_with[section]} but this run "
                f"configures {section}={want}; train with the cache's settings or re-run `vdiff cache`"
            )


def check_shapes(cfg: TrainConfig, *, latent_channels: int, text_dim: int) -> None:
    """The model must take the VAE's latents and the text encoder's embeddings."""
    m = cfg.model
    if m.in_channels != latent_channels or m.out_channels != latent_channels:
        raise ConfigError(
            f"model.in_channels={m.in_channels}, model.out_channels={m.out_channels} but the latents have "
            f"{latent_channels} channels; set both to {latent_channels}"
        )
    if m.text_dim != text_dim:
        raise ConfigError(f"model.text_dim={m.text_dim} but the text embeddings have {text_dim} dims; set it")
