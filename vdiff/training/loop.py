"""The steps a training loop shares (``vdiff train`` and ``vdiff distill``): devices and ranks, the
EMA, the optimizer step at the scheduled lr, resume state, the run folder, logging and checkpoints.

Each is a small function the loop in ``pipelines/train.py`` calls in order, so the loop still reads
top to bottom; what differs between the pipelines (the batch, the noise, the loss) stays in them.
"""

from __future__ import annotations

import copy
import json
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException
from tqdm import tqdm

from vdiff.checkpoint import checkpoint_cause, latest_checkpoint, rng_from_json, rng_to_json, save_checkpoint
from vdiff.data import ShardLoader, cached_settings, load_empty_prompt
from vdiff.errors import EXPECTED_ERRORS, error_line, is_user_error, report_error
from vdiff.optim import learning_rate
from vdiff.parallel import ParallelMesh, build_mesh
from vdiff.parallel.distributed import any_rank, destroy_distributed, full_value, init_distributed, mean_over
from vdiff.parallel.parallelize import shard_like_model, unwrap
from vdiff.training.checks import check_cache, check_shapes
from vdiff.training.config import LoopConfig, TrainConfig
from vdiff.training.metrics import (
    METRICS_FILE,
    Throughput,
    bad_samples_over_ranks,
    max_memory_mb,
    max_over_ranks,
    open_tensorboard,
    write_metrics,
)
from vdiff.training.resume import prepare_run


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def start_ranks(cfg: TrainConfig) -> tuple[torch.device, ParallelMesh, int]:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA), build the data x sequence-parallel
    mesh, check it can train and seed torch with ``cfg.seed``; return (device, mesh, global rank)."""
    device = init_distributed(pick_device(cfg.train.device))
    mesh = build_mesh(cfg.parallel, device_type=device.type)
    mesh.dims.check_training()
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.manual_seed(cfg.seed)
    return device, mesh, rank


def checked_empty_prompt(
    cfg: TrainConfig, loader: ShardLoader, *, vae: Any, text: Any, from_file: bool = True
) -> torch.Tensor:
    """Check that the data fit the model (a cache made with ``cfg.vae`` and ``cfg.text``, the latent
    channels, the text width) and return the empty prompt's embedding (L, D).

    Cached shards hold no encoders: the embedding is the cache's ``empty_prompt`` file, or with
    ``from_file=False`` zeros shaped like the first sample's context (for a caller that never uses it).
    Otherwise ``vae`` and ``text`` are the encoders and ``text`` embeds "".
    """
    if loader.kind == "cached":
        check_cache(cfg, cached_settings(loader.refs[0]))
        first = loader.load(0, 0)
        latent_channels, text_dim = first["latents"].shape[0], first["context"].shape[-1]
        empty = load_empty_prompt(cfg.data.path) if from_file else first["context"] * 0  # (L, D)
    else:
        latent_channels, text_dim = vae.latent_channels, text.dim
        empty = text.encode([""])[0]  # (L, D)
    check_shapes(cfg, latent_channels=latent_channels, text_dim=text_dim)
    return empty


def requires_grad(model: torch.nn.Module, flag: bool = True) -> None:
    """Set ``requires_grad`` on every parameter of ``model``."""
    for p in model.parameters():
        p.requires_grad = flag


def build_ema(model: torch.nn.Module, cfg: TrainConfig, mesh: ParallelMesh) -> torch.nn.Module | None:
    """A frozen copy of ``model`` (before parallelize), sharded like the model; None without EMA."""
    if not cfg.ema.enabled:
        return None
    ema = copy.deepcopy(model).eval()
    requires_grad(ema, False)
    return shard_like_model(ema, mesh, cfg.parallel)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, parameter by parameter."""
    ema_params = OrderedDict(ema.named_parameters())
    for name, p in model.named_parameters():
        if p.requires_grad:  # NOTE: frozen weights (LoRA's base) equal the EMA's already
            ema_params[name].lerp_(p.detach(), 1.0 - decay)


def optimizer_step(
    loss: torch.Tensor,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: torch.nn.Module | None,
    *,
    step: int,
    cfg: TrainConfig,
) -> tuple[float, torch.Tensor]:
    """Backward ``loss``, clip the gradient norm (``optim.grad_clip``; 0: no clipping), step the
    optimizer at the scheduled lr of ``step`` and move ``ema`` (None: none) towards the new weights;
    return (lr, the gradient norm before clipping, a 0-d tensor: reading it waits for the device, so
    the loop reads it only when it logs). ``model`` is the module the loop calls (DDP's wrapper or
    the FSDP-sharded model)."""
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
    return lr, grad_norm


def restore_state(state: dict[str, Any], loader: ShardLoader) -> int:
    """Put the data position and torch's RNG of a loaded checkpoint back; return its step."""
    loader.load_state_dict(state["data"])
    torch.set_rng_state(rng_from_json(state["rng"]))
    return int(state["step"])


def begin_run(run: Path, cfg: TrainConfig, *, step: int, resume_from: Path | None, command: str) -> None:
    """Rank 0's start of the run folder: set aside what a branch leaves behind (resuming from a
    checkpoint older than the run's newest, or starting over in a run that has checkpoints) and say
    where it resumed from. The caller writes ``config.yaml`` next."""
    ckpt_root = run / "checkpoints"
    same_run = resume_from is None or resume_from.resolve().parent == ckpt_root.resolve()
    branch = prepare_run(run, step=step, same_run=same_run and cfg.resume != "none")
    if resume_from is not None:
        print(f"resumed from {resume_from} at step {step}", flush=True)
    if branch is not None:
        print(f"{command}: {branch}", flush=True)


def open_logging(
    run: Path, loop: LoopConfig, *, step: int, rank: int, desc: str
) -> tuple[Any, tqdm, Throughput]:
    """TensorBoard's writer (rank 0 with ``train.tensorboard``; else None), the progress bar and the
    throughput meter of a loop that starts at ``step``."""
    writer = None
    if rank == 0 and loop.tensorboard:
        writer = open_tensorboard(run, purge_step=step + 1 if (run / "tb").is_dir() else None)
    bar = tqdm(total=loop.steps, initial=step, disable=rank != 0 or not loop.progress, desc=desc)
    return writer, bar, Throughput(loop.warmup_log_steps)


def out_of_time(elapsed_s: float, loop: LoopConfig) -> bool:
    """Whether any rank has run past ``train.max_minutes`` (0: no limit). Every rank calls it.

    NOTE: all ranks must agree to stop, or the others would wait in a collective forever.
    """
    return loop.max_minutes > 0 and any_rank(elapsed_s > 60 * loop.max_minutes)


def log_due(step: int, loop: LoopConfig, *, stopping: bool) -> bool:
    """Whether the step just finished (``step`` counts it) writes a metrics row."""
    return step % loop.log_every == 0 or step == 1 or step == loop.steps or stopping


@dataclass
class StepLog:
    """What a logged step gathers over the ranks (:func:`log_values`)."""

    loss: float
    """the global batch's mean loss"""
    memory_mb: float
    """the largest peak device memory of any rank"""
    skipped: int
    """samples ``data.on_error=skip`` passed over so far, all ranks"""
    bad_samples: list[dict[str, Any]]
    """their records (shard, key, error, first epoch)"""


def log_values(
    loss: torch.Tensor, *, device: torch.device, loader: ShardLoader, mesh: ParallelMesh
) -> StepLog:
    """The collectives of a logged step, which every rank calls: mean loss, peak memory, skipped samples."""
    loss_mean = mean_over(loss, mesh.group("dp"))
    memory = max_over_ranks(max_memory_mb(device), device)
    skipped, bad_samples = bad_samples_over_ranks(loader, mesh.group("dp"))
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # NOTE: so the window's time covers the queued GPU work
    return StepLog(loss=loss_mean.item(), memory_mb=memory, skipped=skipped, bad_samples=bad_samples)


def log_row(
    run: Path, row: dict[str, Any], *, writer: Any, bar: tqdm, progress: bool, digits: int = 4
) -> None:
    """Write ``row`` to ``RUN/metrics.jsonl`` (and TensorBoard), show its loss and lr on the bar, and
    print it as JSON when there is no bar."""
    write_metrics(run / METRICS_FILE, row, writer=writer)
    bar.set_postfix(loss=f"{row['loss']:.{digits}f}", lr=f"{row['lr']:.2e}")
    if not progress:
        print(json.dumps(row), flush=True)


def metrics_row(
    step: int,
    lr: float,
    grad_norm: float | torch.Tensor,
    samples_per_s: float,
    elapsed_s: float,
    logged: StepLog,
    **extra: Any,
) -> dict[str, Any]:
    """A ``metrics.jsonl`` row: the keys every loop writes (``step``, ``loss``, ``lr``, ``grad_norm``,
    ``samples_per_s``, ``max_memory_mb``, ``time``, ``data_skipped``), then ``extra``."""
    return {
        "step": step,
        "loss": logged.loss,
        "lr": lr,
        "grad_norm": float(grad_norm),
        "samples_per_s": samples_per_s,
        "max_memory_mb": round(logged.memory_mb, 1),
        "time": round(elapsed_s, 3),
        "data_skipped": logged.skipped,
        **extra,
    }


def save_training_checkpoint(
    ckpt_root: Path,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: torch.nn.Module | None,
    loader: ShardLoader,
    trainable_only: bool,
) -> None:
    """``ckpt_root/step_{step:08d}``: weights, EMA, optimizer, the data position and torch's RNG
    (``trainable_only``: LoRA adapters and their EMA and moments only). A failing disk raises its
    OSError, not torch.distributed.checkpoint's wrapper."""
    trainer_state = {"data": loader.state_dict(), "rng": rng_to_json(torch.get_rng_state())}
    try:
        save_checkpoint(
            ckpt_root,
            step=step,
            model=model,
            optimizer=optimizer,
            ema=ema,
            trainer_state=trainer_state,
            trainable_only=trainable_only,
        )
    except CheckpointException as e:
        raise checkpoint_cause(e) from e


def close_logging(loader: ShardLoader, bar: tqdm, writer: Any) -> None:
    """Stop the data workers (the loader keeps its position for the checkpoint), the bar and the writer."""
    loader.close()
    bar.close()
    if writer is not None:
        writer.close()


@dataclass
class Checkpointer:
    """Saves a loop's checkpoints (:func:`save_training_checkpoint`) and remembers the last step saved."""

    root: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: torch.nn.Module | None
    loader: ShardLoader
    trainable_only: bool
    last_saved: int
    """the step of the newest checkpoint this loop wrote or resumed from"""

    def save(self, step: int) -> None:
        """``root/step_{step:08d}`` now."""
        save_training_checkpoint(
            self.root,
            step=step,
            model=self.model,
            optimizer=self.optimizer,
            ema=self.ema,
            loader=self.loader,
            trainable_only=self.trainable_only,
        )
        self.last_saved = step

    def save_if_due(self, step: int, every: int) -> None:
        """Save at every ``every``-th step (0: never)."""
        if every > 0 and step % every == 0:
            self.save(step)

    def save_final(self, step: int) -> None:
        """Save ``step`` unless it is saved already (a run always ends with a checkpoint)."""
        if step != self.last_saved or latest_checkpoint(self.root) is None:
            self.save(step)


def no_hint(message: str) -> str:
    """No hint after a config error's line."""
    return ""


def run_command(
    prog: str,
    make_config: Callable[[], TrainConfig],
    loop: Callable[[Any], Any],
    *,
    hint: Callable[[str], str] = no_hint,
) -> int:
    """A loop command's exit code: build its config, then ``loop(cfg)`` on every rank.

    0 on success; an expected error is one line on rank 0 (``prog: ...``), exit 2 when it is the
    user's fault (a bad config value, a missing file), 1 when it is the environment's. ``hint``
    adds to a config error's line (e.g. a renamed key's new name). The process group is left on
    every way out.
    """
    try:
        cfg = make_config()
    except ValueError as e:
        print(f"{prog}: {error_line(e)}{hint(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        return report_error(prog, e)
    try:
        loop(cfg)
    except EXPECTED_ERRORS as e:  # NOTE: MeshError and ConfigError are ValueErrors
        if not dist.is_initialized() or dist.get_rank() == 0:
            return report_error(prog, e, where=cfg.run_dir)
        return 2 if is_user_error(e) else 1
    finally:
        destroy_distributed()
    return 0
