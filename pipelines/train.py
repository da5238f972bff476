"""Train a video DiT with flow matching: ``vdiff train CONFIG [key=value ...]``.

The loop reads top to bottom (DiT / nanoGPT style). Each step: (1) read this rank's slice of
the global batch, (2) turn clips into latents and captions into text embeddings unless the
shards are cached, (3) draw σ, noise and caption dropout per sample, (4) regress the velocity
``noise − x0`` at ``x_t`` with an MSE loss, (5) clip, step the optimizer at the scheduled lr,
update the EMA, (6) log, write validation videos and checkpoint. ``RUN = run_dir`` receives
``config.yaml``, ``metrics.jsonl``, TensorBoard events in ``tb/``, ``samples/step_{step:08d}/``
and ``checkpoints/step_{step:08d}/`` (torch.distributed.checkpoint); ``resume=auto`` continues from the
newest checkpoint that loads (passing over damaged ones, with a warning) and reproduces the losses
an uninterrupted run would have had (all randomness is a function of seed, step and sample).
Resuming from an older checkpoint than the run's newest starts a branch: what the run wrote after
it is moved aside (``checkpoints/abandoned-<time>/``, ``metrics.abandoned-<time>.jsonl``), never
mixed in or deleted. ``RUN/bad_samples.jsonl`` lists the samples ``data.on_error=skip`` passed over.
``init_from`` starts from a model folder; ``lora.rank`` trains peft LoRA adapters only, and
``--merge-lora RUN OUT`` folds them into a model folder. Bad values stop the run before any work
(one line, exit 2); a failing disk is one line naming the path (exit 1).
"""

from __future__ import annotations

import copy
import json
import re
import resource
import shutil
import sys
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.api import CheckpointException
from tqdm import tqdm

from vdiff.checkpoint import (
    checkpoint_keys,
    latest_checkpoint,
    load_checkpoint,
    load_state,
    rng_from_json,
    rng_to_json,
    save_checkpoint,
)
from vdiff.config import ConfigError, describe, is_override, load_config, save_config, to_dict
from vdiff.data import DataConfig, ShardLoader, cached_settings, list_shards, load_empty_prompt
from vdiff.diffusion import (
    add_noise,
    draw_training_noise,
    euler_sample,
    flow_sigmas,
    resolution_shift,
    sample_seed,
    sigma_to_timestep,
    velocity_target,
)
from vdiff.encoders import TextEncoderConfig, VAEConfig, build_text_encoder, build_vae
from vdiff.errors import EXPECTED_ERRORS, error_line, is_user_error, report_error
from vdiff.io.files import atomic_write_text
from vdiff.io.video import write_mp4
from vdiff.models import ModelConfig, build_model, load_model, save_model
from vdiff.optim import OptimConfig, build_optimizer, learning_rate
from vdiff.parallel import build_mesh
from vdiff.parallel.config import ParallelConfig
from vdiff.parallel.distributed import any_rank, destroy_distributed, full_value, init_distributed, mean_over
from vdiff.parallel.parallelize import parallelize, shard_like_model, unwrap


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

    def validate(self) -> None:
        for name in ("steps", "batch_size", "log_every", "sample_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_minutes", "warmup_log_steps", "sample_every"):
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


BAD_SAMPLES_FILE = "bad_samples.jsonl"
"""in the run folder: the samples data.on_error=skip passed over (shard, key, error, first epoch)"""

# ----------------------------------------------------------------------------- helpers


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, parameter by parameter."""
    ema_params = OrderedDict(ema.named_parameters())
    for name, p in model.named_parameters():
        if p.requires_grad:  # NOTE: frozen weights (LoRA's base) equal the EMA's already
            ema_params[name].lerp_(p.detach(), 1.0 - decay)


def requires_grad(model: torch.nn.Module, flag: bool = True) -> None:
    """Set ``requires_grad`` on every parameter of ``model``."""
    for p in model.parameters():
        p.requires_grad = flag


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def num_tokens(latent_shape: torch.Size | tuple[int, ...], patch: tuple[int, int, int]) -> int:
    """Tokens of one latent (C, T, H, W) after the model's (t, h, w) patchify."""
    _, t, h, w = latent_shape
    return (t // patch[0]) * (h // patch[1]) * (w // patch[2])


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


def base_model(cfg: TrainConfig) -> torch.nn.Module:
    """The weights a run starts from: ``init_from``'s, or the seeded random init of ``model.*``."""
    torch.manual_seed(cfg.seed)
    if not cfg.init_from:
        return build_model(cfg.model).train()
    # NOTE: float32 master weights whatever the file holds (bf16 releases too); autocast does bf16.
    model = load_model(cfg.init_from, dtype=torch.float32, attention=cfg.model.attention)
    want, got = to_dict(cfg.model), to_dict(model.config)
    wrong = [f"model.{k}={want[k]!r} (init_from has {got[k]!r})" for k in want if want[k] != got[k]]
    if wrong:
        raise ConfigError(
            f"init_from={cfg.init_from} is another architecture: {', '.join(wrong)}; set those keys"
        )
    return model.train()


def apply_lora(model: torch.nn.Module, cfg: LoRAConfig) -> torch.nn.Module:
    """Add peft LoRA adapters to ``cfg.target_modules`` in place; freeze everything else."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules)
    )
    try:
        return inject_adapter_in_model(config, model)
    except ValueError as e:
        raise ConfigError(f"lora.target_modules={list(cfg.target_modules)}: {e}") from e


def check_lora_can_learn(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Refuse LoRA on the seeded init: its output head is zero and frozen, so no adapter gets a gradient."""
    from peft.tuners.lora import LoraLayer

    if not cfg.init_from and not any(isinstance(m, LoraLayer) for m in model.unembed.modules()):
        raise ConfigError(
            f"lora.rank={cfg.lora.rank} without init_from: the seeded init's output projection is zero and "
            "LoRA freezes it, so the adapters would get no gradient; set init_from=<a trained model folder> "
            "(or add unembed.proj to lora.target_modules)"
        )


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every adapter into its base weight (W ← W + (alpha/r)·B·A) and drop the adapters."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def load_trained_weights(model: torch.nn.Module, ckpt: Path, *, weights: str) -> None:
    """Load the trainable parameters' ``weights`` ("model" or "ema") of a DCP checkpoint into ``model``."""
    keys = checkpoint_keys(ckpt)  # NOTE: never dcp.FileSystemReader: it unpickles .metadata unrestricted
    if not any(k.startswith(f"{weights}.") for k in keys):
        raise FileNotFoundError(
            f"{ckpt} holds no {weights!r} weights (ema.enabled=false?); use weights=model"
        )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    state = {weights: {k: v for k, v in model.state_dict().items() if k in trainable}}
    load_state(state, ckpt, no_dist=True)
    model.load_state_dict(state[weights], strict=False)


def merge_run(run: str | Path, out: str | Path, *, weights: str = "auto") -> Path:
    """Write the merged model (base + LoRA adapters of ``run``'s latest checkpoint) as a vdiff model folder.

    ``weights``: ``ema``, ``model`` (the raw weights) or ``auto`` (EMA when the run kept one). The
    base is rebuilt as training built it (``init_from``, or the seeded init), so ``init_from``
    must still be there. The result loads with :func:`vdiff.models.load_model`.
    """
    run = Path(run)
    cfg = load_config(TrainConfig, run / "config.yaml")
    if cfg.lora.rank <= 0:
        raise ConfigError(f"{run} trained without LoRA (lora.rank=0): its checkpoints hold the whole model")
    ckpt = latest_checkpoint(run / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"{run}/checkpoints holds no complete checkpoint to merge")
    weights = ("ema" if cfg.ema.enabled else "model") if weights == "auto" else weights
    return save_model(merged_lora_model(cfg, ckpt, weights=weights), out)


def merged_lora_model(cfg: TrainConfig, ckpt: Path, *, weights: str) -> torch.nn.Module:
    """The base of a LoRA run (config ``cfg``) with the adapters of ``ckpt`` (``weights``: ema or model)
    folded in, in eval mode: a plain VideoDiT."""
    check_weights_exist(cfg)
    model = apply_lora(base_model(cfg), cfg.lora)
    load_trained_weights(model, ckpt, weights=weights)
    return merge_lora(model).eval()


def check_cache(cfg: TrainConfig, made_with: dict[str, Any]) -> None:
    """Cached latents must come from the configured VAE and text encoder (sampling decodes with them)."""
    for section in ("vae", "text"):
        want = to_dict(getattr(cfg, section))
        if section in made_with and made_with[section] != want:
            raise ConfigError(
                f"data.path={cfg.data.path} was cached with {section}={made_with[section]} but this run "
                f"configures {section}={want}; train with the cache's settings or re-run `vdiff cache`"
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


STEP_FOLDER = re.compile(r"^step_(\d{8,})$")


def step_folders(root: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of each ``step_{step:08d}`` folder in ``root`` (complete or not), newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_FOLDER.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from, judged by its files; None when they are all there."""
    if not ckpt.is_dir():
        return "no such folder" if not ckpt.exists() else "not a folder"
    metadata = ckpt / ".metadata"
    if not metadata.is_file() or metadata.stat().st_size == 0:
        return "no .metadata, or an empty one (its writing did not finish)"
    if not any(ckpt.glob("*.distcp")):
        return "no tensor files (*.distcp)"
    trainer = ckpt / "trainer" / "rank-00000.json"
    try:
        state = json.loads(trainer.read_text())
    except FileNotFoundError:
        return "no trainer/rank-00000.json (step, data position, RNG)"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"trainer/rank-00000.json is unreadable ({type(e).__name__}: {e})"
    m = STEP_FOLDER.match(ckpt.name)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return "trainer/rank-00000.json holds no step"
    if m and int(m.group(1)) != state["step"]:
        return f"trainer/rank-00000.json says step {state['step']}, the folder's name another"
    return None


def load_problem(error: BaseException) -> str:
    """The first line of a failed checkpoint load, as the reason to pass the checkpoint over."""
    if isinstance(error, CheckpointException):
        error = next(iter(error.failures.values()))[0] if error.failures else error
    first = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), type(error).__name__)
    return f"it does not load ({type(error).__name__}: {first[:1000]})"


def checkpoint_cause(error: CheckpointException) -> BaseException:
    """A rank's own exception inside DCP's CheckpointException (e.g. the OSError of a full disk)."""
    return next(iter(error.failures.values()))[0] if error.failures else error


def free_name(parent: Path, stem: str, suffix: str = "") -> Path:
    """``parent/stem<suffix>``, or ``parent/stem-2<suffix>``, ... : the first that does not exist."""
    path, n = parent / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = parent / f"{stem}-{n}{suffix}"
    return path


def cut_metrics(path: Path, step: int, *, aside: Path | None) -> int:
    """Keep the metrics rows up to ``step``; the later ones (and a half-written last line) go to the file
    ``aside``, or are dropped when it is None (a killed run's rows, reproduced by the resume). Returns
    how many rows were cut."""
    if not path.is_file():
        return 0
    kept, cut = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row_step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            row_step = None  # NOTE: the last line of a killed run may be cut short
        (kept if isinstance(row_step, int) and row_step <= step else cut).append(line)
    if cut and aside is not None:
        atomic_write_text(aside, "".join(r + "\n" for r in cut))
    atomic_write_text(path, "".join(r + "\n" for r in kept))
    return len(cut)


def start_branch(run: Path, *, step: int, same_run: bool) -> str | None:
    """Set aside what ``run`` holds from after ``step`` (everything, when ``same_run`` is false): later
    checkpoints and validation videos move to ``abandoned-<time>/`` in their folders, later metrics rows
    to ``metrics.abandoned-<time>.jsonl``; nothing is deleted. Returns the message (None: nothing later)."""
    later = {
        name: [p for s, p in step_folders(run / name) if s > step or not same_run]
        for name in ("checkpoints", "samples")
    }
    metrics = run / "metrics.jsonl"
    if not later["checkpoints"] and (same_run or not (metrics.is_file() and metrics.stat().st_size)):
        return None  # NOTE: nothing of another line of training is here
    stamp = "abandoned-" + time.strftime("%Y%m%d-%H%M%S")
    ckpt_aside = free_name(run / "checkpoints", stamp)
    ckpt_aside.mkdir()
    for folder in later["checkpoints"]:
        folder.rename(ckpt_aside / folder.name)
    if (run / "config.yaml").is_file():
        shutil.copy2(run / "config.yaml", ckpt_aside / "config.yaml")  # NOTE: the abandoned run's config
    if later["samples"]:
        samples_aside = free_name(run / "samples", stamp)
        samples_aside.mkdir()
        for folder in later["samples"]:
            folder.rename(samples_aside / folder.name)
    rows_aside = free_name(run, ckpt_aside.name.replace("abandoned", "metrics.abandoned"), ".jsonl")
    rows = cut_metrics(metrics, step if same_run else 0, aside=rows_aside)
    names = ", ".join(p.name for p in reversed(later["checkpoints"])) or "none"
    moved_rows = f"; {rows} metrics rows moved to {rows_aside}" if rows else ""
    return (
        f"branching at step {step}: the run's later checkpoints ({names}) moved to {ckpt_aside}{moved_rows}"
    )


def bad_samples_over_ranks(loader: ShardLoader, group: Any) -> tuple[int, list[dict[str, Any]]]:
    """(skipped sample reads, one record per bad sample) over the data-parallel ranks (every rank calls it).

    The list is ordered by (epoch, shard, key), so it does not depend on the number of ranks.
    """
    per_rank = [(loader.skipped, loader.bad_samples)]
    if group is not None:
        per_rank = [None] * dist.get_world_size(group)
        dist.all_gather_object(per_rank, (loader.skipped, loader.bad_samples), group=group)
    records = {(r["shard"], r["key"]): r for _, bad in per_rank for r in bad}
    ordered = sorted(records.values(), key=lambda r: (r["epoch"], r["shard"], r["key"]))
    return sum(n for n, _ in per_rank), [*loader.index_errors, *ordered]


def write_bad_samples(path: Path, records: list[dict[str, Any]]) -> None:
    """``RUN/bad_samples.jsonl``: a line per sample data.on_error=skip passed over (written once any was)."""
    if records or path.exists():
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


@dataclass
class Throughput:
    """Samples and latent tokens per second over the steps since the last :meth:`rates` call.

    Steps before ``warmup`` (counted from this process's first step) are not counted, so
    compilation, allocator growth and first-batch decoding do not lower the figures.
    """

    warmup: int
    seen: int = 0
    seconds: float = 0.0
    samples: int = 0
    tokens: int = 0

    def add(self, seconds: float, *, samples: int, tokens: int) -> None:
        """Count one step that took ``seconds`` for ``samples`` clips of ``tokens`` tokens in all."""
        self.seen += 1
        if self.seen > self.warmup:
            self.seconds += seconds
            self.samples += samples
            self.tokens += tokens

    def rates(self) -> tuple[float | None, float | None]:
        """(samples/s, tokens/s) of the window, then start a new one; None while only warm-up steps ran."""
        if self.seconds <= 0:
            return None, None
        out = (self.samples / self.seconds, self.tokens / self.seconds)
        self.seconds, self.samples, self.tokens = 0.0, 0, 0
        return out


def max_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA max allocated on ``device``, else the peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # NOTE: ru_maxrss is in KiB on Linux (bytes on macOS); it covers the whole process.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def max_over_ranks(value: float, device: torch.device) -> float:
    """The largest ``value`` over all ranks (every rank calls it); ``value`` without a process group."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def open_tensorboard(run: Path, *, purge_step: int | None) -> Any:
    """A SummaryWriter on ``run/tb``; events at ``purge_step`` or later (from a killed run) are dropped."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(
            "train.tensorboard=true needs the tensorboard package: pip install tensorboard "
            "(or set train.tensorboard=false)"
        ) from e
    return SummaryWriter(log_dir=str(run / "tb"), purge_step=purge_step)


@torch.no_grad()
def validation_videos(
    model: torch.nn.Module,
    *,
    context: torch.Tensor,
    latent_shape: tuple[int, ...],
    seeds: list[int],
    sigmas: torch.Tensor,
    vae: Any,
    autocast: Any,
) -> torch.Tensor | None:
    """Euler flow-matching samples from ``model``: (P, 3, T, H, W) videos in [-1, 1], or None off rank 0.

    Every rank calls it (an FSDP-sharded model gathers its weights in the forward pass); only
    ranks given a ``vae`` decode. ``context`` (P, L, D) holds the prompts' embeddings and
    ``seeds`` one noise seed per prompt, so each validation round starts from the same noise.
    """
    from pipelines.sample import initial_noise

    x = initial_noise(latent_shape, seeds).to(context.device)  # (P, C, T, H, W)

    def velocity(xt: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with autocast:
            return model(xt, sigma_to_timestep(sigma), context).float()

    x0 = euler_sample(velocity, x, sigmas)
    return None if vae is None else vae.decode(x0).float().clamp(-1, 1)


def write_videos(videos: torch.Tensor, folder: Path, *, prompts: list[str], fps: float) -> None:
    """``folder/NN.mp4`` for each (3, T, H, W) video in ``videos``, and ``folder/prompts.txt``."""
    from pipelines.sample import to_uint8

    for i, video in enumerate(videos):
        write_mp4(folder / f"{i:02d}.mp4", to_uint8(video), fps)
    atomic_write_text(folder / "prompts.txt", "".join(f"{i:02d}\t{p}\n" for i, p in enumerate(prompts)))


# ----------------------------------------------------------------------------- training


def train(cfg: TrainConfig) -> Path:
    """Run the training loop of ``cfg``; return the run folder."""
    check_weights_exist(cfg)
    check_ring_backend(cfg)
    check_paths(cfg)
    run = Path(cfg.run_dir)
    ckpt_root = run / "checkpoints"
    metrics_path = run / "metrics.jsonl"

    # 1. Devices, ranks and the mesh: torchrun's processes join one group (gloo on CPU, NCCL on
    # CUDA); the mesh splits them into data-parallel and sequence-parallel ranks (vdiff.parallel).
    device = init_distributed(pick_device(cfg.train.device))
    mesh = build_mesh(cfg.parallel, device_type=device.type)
    mesh.dims.check_training()
    rank = dist.get_rank() if dist.is_initialized() else 0
    dp_rank, dp_world = mesh.dp_rank, mesh.dims.dp
    local_batch = mesh.dims.local_batch_size(cfg.train.batch_size)
    torch.manual_seed(cfg.seed)

    # 2. Data: this dp rank's slice of each global batch (sequence-parallel peers share dp_rank).
    loader = ShardLoader(cfg.data, batch_size=local_batch, rank=dp_rank, world=dp_world, seed=cfg.seed)
    cached = loader.kind == "cached"

    # 3. Frozen encoders (only what the data needs): latents and text embeddings.
    vae = None if cached else build_vae(cfg.vae).to(device)
    text = None if cached else build_text_encoder(cfg.text).to(device)
    if cached:
        check_cache(cfg, cached_settings(loader.refs[0]))
        first = loader.load(0, 0)
        latent_channels, text_dim = first["latents"].shape[0], first["context"].shape[-1]
        empty = load_empty_prompt(cfg.data.path) if cfg.flow.caption_dropout > 0 else first["context"] * 0
    else:
        latent_channels, text_dim = vae.latent_channels, text.dim
        empty = text.encode([""])[0]  # (L, D)
    empty = empty.to(device)
    check_shapes(cfg, latent_channels=latent_channels, text_dim=text_dim)

    # 3b. Validation prompts. NOTE: cached shards hold no encoders; the cache check above proved
    # cfg.vae and cfg.text are the ones it was made with, so they are built here: the text encoder
    # only to embed the prompts once (then freed), the VAE on rank 0 only, to decode.
    sample_context, sample_vae = None, None
    if cfg.train.sample_every > 0:
        prompt_encoder = text if text is not None else build_text_encoder(cfg.text).to(device)
        with torch.no_grad():
            sample_context = prompt_encoder.encode(list(cfg.train.sample_prompts)).to(device)  # (P, L, D)
        del prompt_encoder
        if rank == 0:
            sample_vae = vae if vae is not None else build_vae(cfg.vae).to(device)

    # 4. Model, EMA and optimizer. Every rank builds the same weights (same seed); parallelize
    # applies sequence parallelism, activation checkpointing, compile and FSDP2/HSDP/DDP, and the
    # EMA is sharded like the model. The optimizer is built on the (sharded) parameters.
    # NOTE: base_model seeds again right before init, so loading encoders cannot shift it. LoRA
    # adapters go in before the EMA copy and parallelize, so both see the same modules.
    model = base_model(cfg).to(device)
    lora = cfg.lora.rank > 0
    if lora:
        model = apply_lora(model, cfg.lora)
        check_lora_can_learn(model, cfg)
    ema = None
    if cfg.ema.enabled:
        ema = copy.deepcopy(model).eval()
        requires_grad(ema, False)
        ema = shard_like_model(ema, mesh, cfg.parallel)
    model = parallelize(model, mesh, cfg.parallel)  # the module to call (DDP wraps it)
    optimizer = build_optimizer(unwrap(model), cfg.optim)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.train.bf16 else nullcontext()

    # 5. Resume: weights, EMA, optimizer moments, step, data position, RNG. resume=auto takes the
    # newest checkpoint that loads; a damaged one is passed over with a warning naming what is wrong.
    step, state, resume_from, passed_over = 0, None, None, []
    candidates = [p for _, p in step_folders(ckpt_root)] if cfg.resume == "auto" else []
    if cfg.resume not in ("auto", "none"):
        candidates = [Path(cfg.resume)]
    for ckpt in candidates:
        state, problem = None, checkpoint_problem(ckpt)
        if problem is None:
            try:
                state = load_checkpoint(
                    ckpt, model=unwrap(model), optimizer=optimizer, ema=ema, trainable_only=lora
                )
            except (Exception, CheckpointException) as e:
                problem = load_problem(e)
        if not any_rank(problem is not None):  # NOTE: every rank resumes from the same checkpoint
            resume_from = ckpt
            break
        reason = problem or "it does not load on another rank"
        if cfg.resume != "auto":
            raise ConfigError(f"resume={cfg.resume}: {reason}")
        passed_over.append(f"{ckpt.name}: {reason}")
        if rank == 0:
            print(f"vdiff train: warning: resume=auto passes over {ckpt}: {reason}", file=sys.stderr)
    if passed_over and resume_from is None:
        raise ConfigError(
            f"resume=auto: no checkpoint under {ckpt_root} can be resumed ({'; '.join(passed_over)}); "
            "resume=PATH picks one, resume=none starts over (they are then moved aside, not deleted)"
        )
    if state is not None:
        step = int(state["step"])
        loader.load_state_dict(state["data"])
        torch.set_rng_state(rng_from_json(state["rng"]))

    # 5b. The run folder. Resuming from a checkpoint older than the run's newest (or starting over in
    # a run that has checkpoints) begins a branch: what was written after it is set aside, not mixed in.
    same_run = resume_from is None or resume_from.resolve().parent == ckpt_root.resolve()
    skipped, bad_samples = bad_samples_over_ranks(loader, mesh.group("dp"))
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        branch = start_branch(run, step=step, same_run=same_run and cfg.resume != "none")
        if branch is None:
            cut_metrics(metrics_path, step, aside=None)  # a killed run's rows after its checkpoint
        save_config(cfg, run / "config.yaml")
        write_bad_samples(run / BAD_SAMPLES_FILE, bad_samples)
        if resume_from is not None:
            print(f"resumed from {resume_from} at step {step}", flush=True)
        if branch is not None:
            print(f"vdiff train: {branch}", flush=True)
    if dist.is_initialized():
        dist.barrier()

    # 5c. Logging: metrics.jsonl and TensorBoard (rank 0), a progress bar, throughput after warm-up.
    writer = None
    if rank == 0 and cfg.train.tensorboard:
        writer = open_tensorboard(run, purge_step=step + 1 if (run / "tb").is_dir() else None)
    bar = tqdm(total=cfg.train.steps, initial=step, disable=rank != 0 or not cfg.train.progress, desc="train")
    meter = Throughput(cfg.train.warmup_log_steps)

    def checkpoint() -> None:
        trainer_state = {"data": loader.state_dict(), "rng": rng_to_json(torch.get_rng_state())}
        try:
            save_checkpoint(
                ckpt_root,
                step=step,
                model=unwrap(model),
                optimizer=optimizer,
                ema=ema,
                trainer_state=trainer_state,
                trainable_only=lora,  # LoRA: adapters (+ their EMA and moments) only
            )
        except CheckpointException as e:
            raise checkpoint_cause(e) from e  # NOTE: e.g. the OSError of a full disk, not DCP's wrapper

    # 6. The loop.
    t0 = time.time()
    batches = iter(loader)
    last_saved = step
    while step < cfg.train.steps:
        t_step = time.perf_counter()
        # 6a. This rank's batch -> latents x0 (B, C, T, H, W) and context (B, L, D).
        batch = next(batches)
        with torch.no_grad():
            if cached:
                x0 = batch["latents"].to(device)
                context = batch["context"].to(device)
            else:
                x0 = vae.encode(batch["video"].to(device)).float()
                context = text.encode(batch["caption"])

        # 6b. Per-sample σ, noise and caption dropout, seeded by (seed, step, global sample index).
        first_index = step * cfg.train.batch_size + dp_rank * local_batch
        seeds = [sample_seed(seed=cfg.seed, step=step, index=first_index + i) for i in range(len(x0))]
        shift = cfg.flow.shift
        if shift <= 0:
            shift = resolution_shift(
                num_tokens(x0.shape[1:], cfg.model.patch_size),
                base_tokens=cfg.flow.base_tokens,
                base_shift=cfg.flow.base_shift,
            )
        sigma, noise, drop = draw_training_noise(
            x0,
            seeds=seeds,
            mean=cfg.flow.logit_mean,
            std=cfg.flow.logit_std,
            shift=shift,
            dropout=cfg.flow.caption_dropout,
        )
        context = torch.where(drop.view(-1, 1, 1), empty.expand_as(context), context)  # (B, L, D)
        xt = add_noise(x0, noise, sigma)  # (B, C, T, H, W)
        target = velocity_target(x0, noise)

        # 6c. Forward and loss. NOTE: the per-rank mean; FSDP/DDP average gradients over the
        # dp x sp ranks, and every rank of a sequence-parallel group computes the same loss.
        with autocast:
            pred = model(xt, sigma_to_timestep(sigma), context)
        loss = F.mse_loss(pred.float(), target)

        # 6d. Backward, clip, step at the scheduled lr, EMA.
        lr = learning_rate(step, cfg.optim, total_steps=cfg.train.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = full_value(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        optimizer.step()
        if ema is not None:
            update_ema(ema, unwrap(model), cfg.ema.decay)
        step += 1

        # 6e. Log (loss reduced over ranks here when distributed) and checkpoint.
        elapsed = time.time() - t0
        # NOTE: all ranks must agree to stop, or the others would wait in a collective forever.
        out_of_time = cfg.train.max_minutes > 0 and any_rank(elapsed > 60 * cfg.train.max_minutes)
        log_now = step % cfg.train.log_every == 0 or step == 1 or step == cfg.train.steps or out_of_time
        if log_now:
            loss_mean = mean_over(loss, mesh.group("dp"))  # the global batch's loss; every rank calls it
            memory = max_over_ranks(max_memory_mb(device), device)
            skipped, bad_samples = bad_samples_over_ranks(loader, mesh.group("dp"))
        if device.type == "cuda" and log_now:
            torch.cuda.synchronize(device)  # NOTE: so the window's time covers the queued GPU work
        tokens = num_tokens(x0.shape[1:], cfg.model.patch_size) * cfg.train.batch_size  # all ranks
        meter.add(time.perf_counter() - t_step, samples=cfg.train.batch_size, tokens=tokens)
        bar.update(1)
        if log_now:
            samples_per_s, tokens_per_s = meter.rates()
        if rank == 0 and log_now:
            row = {
                "step": step,
                "loss": loss_mean.item(),
                "lr": lr,
                "grad_norm": float(grad_norm),
                "samples_per_s": samples_per_s,
                "tokens_per_s": tokens_per_s,
                "max_memory_mb": round(memory, 1),
                "time": round(elapsed, 3),
                "shift": round(shift, 4),
                "data_skipped": skipped,
            }
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            write_bad_samples(run / BAD_SAMPLES_FILE, bad_samples)
            if writer is not None:
                for key, value in row.items():
                    if key != "step" and value is not None:
                        writer.add_scalar(f"train/{key}", value, step)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
            if not cfg.train.progress:
                print(json.dumps(row), flush=True)
        if cfg.train.sample_every > 0 and step % cfg.train.sample_every == 0:
            # 6f. Validation videos from the EMA weights (or the raw ones without EMA).
            videos = validation_videos(
                ema if ema is not None else model,
                context=sample_context,
                latent_shape=tuple(x0.shape[1:]),
                seeds=[cfg.seed + i for i in range(len(sample_context))],
                sigmas=flow_sigmas(cfg.train.sample_steps, shift=shift),
                vae=sample_vae,
                autocast=autocast,
            )
            if rank == 0:
                write_videos(
                    videos,
                    run / "samples" / f"step_{step:08d}",
                    prompts=cfg.train.sample_prompts,
                    fps=cfg.data.fps,
                )
        if cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0:
            checkpoint()
            last_saved = step
        if out_of_time:
            break

    # 7. Final checkpoint.
    loader.close()  # NOTE: stops the data workers now; the checkpoint keeps the loader's position
    bar.close()
    if writer is not None:
        writer.close()
    if step != last_saved or latest_checkpoint(ckpt_root) is None:
        checkpoint()
    skipped, bad_samples = bad_samples_over_ranks(loader, mesh.group("dp"))
    if rank == 0:
        write_bad_samples(run / BAD_SAMPLES_FILE, bad_samples)
        if skipped:
            print(
                f"vdiff train: data.on_error=skip passed over {skipped} reads of {len(bad_samples)} bad "
                f"samples; see {run / BAD_SAMPLES_FILE}",
                file=sys.stderr,
                flush=True,
            )
    if lora and cfg.lora.merge_to:
        if rank == 0:
            merge_run(run, cfg.lora.merge_to)
            print(f"merged LoRA model written to {cfg.lora.merge_to}", flush=True)
        if dist.is_initialized():
            dist.barrier()
    return run


def renamed_hint(message: str) -> str:
    """`` (KEY is now NEW)`` when a config error names a key in :data:`RENAMED_KEYS`."""
    m = re.match(r"unknown config key ([\w.]+)", message)
    if m and m.group(1) in RENAMED_KEYS:
        return f" ({m.group(1)} is now {RENAMED_KEYS[m.group(1)]})"
    return ""


USAGE = """usage: vdiff train CONFIG.yaml [key.sub=value ...]
       vdiff train --merge-lora RUN OUT [--weights auto|ema|model]
       torchrun --nproc_per_node=N -m pipelines.train CONFIG.yaml [key.sub=value ...]

--merge-lora writes RUN's latest LoRA checkpoint merged into its base as a vdiff model folder OUT
(loadable by vdiff.models.load_model and vdiff sample --model OUT)."""


def merge_main(args: list[str]) -> int:
    """``vdiff train --merge-lora RUN OUT [--weights auto|ema|model]``."""
    weights = "auto"
    if len(args) == 4 and args[2] == "--weights" and args[3] in ("auto", "ema", "model"):
        weights = args[3]
    elif len(args) != 2:
        print(
            f"vdiff train: --merge-lora takes RUN OUT [--weights auto|ema|model]\n\n{USAGE}", file=sys.stderr
        )
        return 2
    try:
        out = merge_run(args[0], args[1], weights=weights)
    except EXPECTED_ERRORS as e:
        return report_error("vdiff train --merge-lora", e, where=args[1])
    print(f"merged model written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``vdiff train CONFIG.yaml [key.sub=value ...]`` (or ``--merge-lora RUN OUT``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\nconfig keys:")
        print("\n".join("  " + line for line in describe(TrainConfig)))
        return 0
    if argv[0] == "--merge-lora":
        return merge_main(argv[1:])
    path = None if is_override(argv[0]) else argv[0]
    overrides = argv[1:] if path is not None else argv
    bad = [a for a in overrides if not is_override(a)]
    if bad:
        what = "an existing file (one CONFIG comes first)" if Path(bad[0]).exists() else "not"
        print(f"vdiff train: {bad[0]!r} is {what} a key.sub=value override\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(TrainConfig, path, overrides)
    except ValueError as e:
        print(f"vdiff train: {error_line(e)}{renamed_hint(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        return report_error("vdiff train", e)
    try:
        train(cfg)
    except EXPECTED_ERRORS as e:  # NOTE: MeshError and ConfigError are ValueErrors
        if not dist.is_initialized() or dist.get_rank() == 0:
            return report_error("vdiff train", e, where=cfg.run_dir)
        return 2 if is_user_error(e) else 1
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
