"""Distil a trained run into a few-step student: ``vdiff distill TEACHER_RUN --out DIR [key=value ...]``.

The loop reads like ``pipelines/train.py`` and writes the same run folder (``config.yaml``,
``metrics.jsonl``, ``tb/``, ``checkpoints/step_{step:08d}/``, exact ``resume=auto``, LoRA or full,
FSDP2 / DDP / Ulysses / ring on torchrun), plus ``DIR/teacher/``: the frozen teacher's weights as a
model folder, the student's starting point and its run's ``init_from``. Each step: (1) read this
rank's slice of the global batch of captions, (2) draw each video's noise, seeded by (seed, step,
sample), (3) run the teacher's guided Euler solution from it and keep its states at the student's
K levels, (4) regress the student's one-step velocity over each of the K segments onto the
teacher's (:mod:`vdiff.training.distill`), (5) clip, step, EMA, (6) log and checkpoint.

The run's config is the teacher run's ``model``, ``vae``, ``text``, ``data`` and ``flow`` sections,
then ``--config FILE`` (e.g. configs/distill-demo.yaml), then the ``key=value`` overrides;
``vdiff sample --model DIR`` samples the student with its K steps and no guidance.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch.distributed.checkpoint.api import CheckpointException
from tqdm import tqdm

from vdiff.checkpoint import (
    checkpoint_cause,
    latest_checkpoint,
    load_checkpoint,
    rng_from_json,
    rng_to_json,
    save_checkpoint,
)
from vdiff.config import ConfigError, config_from_dict, describe, parse_override, save_config, split_overrides
from vdiff.data import ShardLoader, cached_settings, load_empty_prompt
from vdiff.diffusion import sample_seed
from vdiff.encoders import build_text_encoder, build_vae
from vdiff.errors import EXPECTED_ERRORS, error_line, is_user_error, report_error
from vdiff.models import load_model, save_model
from vdiff.optim import build_optimizer, learning_rate
from vdiff.parallel import build_mesh
from vdiff.parallel.distributed import any_rank, destroy_distributed, full_value, init_distributed, mean_over
from vdiff.parallel.parallelize import parallelize, shard_like_model, unwrap
from vdiff.parallel.sequence import apply_sequence_parallel
from vdiff.runs import load_run_model
from vdiff.sampling import initial_noise
from vdiff.training import (
    METRICS_FILE,
    Throughput,
    apply_lora,
    bad_samples_over_ranks,
    base_model,
    check_cache,
    check_paths,
    check_ring_backend,
    check_shapes,
    check_weights_exist,
    max_memory_mb,
    max_over_ranks,
    open_tensorboard,
    prepare_run,
    resume_checkpoint,
    write_metrics,
)
from vdiff.training.distill import (
    TEACHER_DIR,
    DistillRunConfig,
    guided_velocity,
    segment_targets,
    student_sigmas,
    substeps,
    teacher_sigmas,
    teacher_trajectory,
)

TEACHER_SECTIONS = ("model", "vae", "text", "data", "flow")
"""the sections of the teacher run's config.yaml a student run starts from"""

# ----------------------------------------------------------------------------- helpers


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, for the parameters that train."""
    ema_params = OrderedDict(ema.named_parameters())
    for name, p in model.named_parameters():
        if p.requires_grad:
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


def teacher_sections(teacher: Path) -> dict[str, Any]:
    """The :data:`TEACHER_SECTIONS` of the teacher run's ``config.yaml``."""
    path = teacher / "config.yaml"
    if not path.is_file() or not (teacher / "checkpoints").is_dir():
        raise ConfigError(
            f"TEACHER_RUN {teacher}: not a vdiff training run (config.yaml + checkpoints/); name the folder "
            "`vdiff train` wrote"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return {k: raw[k] for k in TEACHER_SECTIONS if k in raw}


def read_yaml(path: str) -> dict[str, Any]:
    """A ``--config`` file as a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a mapping at the top level")
    return data


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, section by section."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def distill_config(
    teacher: str | Path, *, out: str, config: str | None = None, overrides: list[str] | None = None
) -> DistillRunConfig:
    """The student run's config: the teacher's sections, then ``config``, then ``overrides``."""
    teacher = Path(teacher)
    data: dict[str, Any] = teacher_sections(teacher)
    if config:
        data = merge(data, read_yaml(config))
    data = merge(data, {"run_dir": out, "distill": {"teacher": str(teacher)}})
    for text in overrides or []:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        data = merge(data, nested)
    if data.get("init_from"):
        raise ConfigError(
            "init_from is set by vdiff distill (RUN/teacher, the teacher's weights); leave it out"
        )
    data["init_from"] = str((Path(data["run_dir"]) / TEACHER_DIR).resolve())
    return config_from_dict(DistillRunConfig, data)


def previous_teacher(run: Path) -> str | None:
    """``distill.teacher`` of the config.yaml a student run already holds (None: none there)."""
    path = run / "config.yaml"
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    section = raw.get("distill") if isinstance(raw, dict) else None
    return str(section.get("teacher")) if isinstance(section, dict) and section.get("teacher") else None


def export_teacher(cfg: DistillRunConfig) -> Path:
    """Write the teacher's weights to RUN/teacher once (a fresh run, or ``resume=none``); return it.

    A resumed run keeps the copy it started with, so later training of the teacher run cannot
    change what a resumed student learns from.
    """
    folder = Path(cfg.init_from)
    if (folder / "config.json").is_file() and cfg.resume != "none":
        before = previous_teacher(Path(cfg.run_dir))
        if before is not None and Path(before).resolve() != Path(cfg.distill.teacher).resolve():
            raise ConfigError(
                f"{cfg.run_dir} distils {before}, not {cfg.distill.teacher}; choose another --out, or pass "
                "resume=none to start it over with this teacher"
            )
        return folder
    trained = load_run_model(cfg.distill.teacher, weights=cfg.distill.teacher_weights)
    print(
        f"teacher: {cfg.distill.teacher} step {trained.step} ({trained.weights} weights) -> {folder}",
        flush=True,
    )
    return save_model(trained.model, folder)


# ----------------------------------------------------------------------------- distillation


def distill(cfg: DistillRunConfig) -> Path:
    """Run the distillation loop of ``cfg``; return the run folder."""
    check_ring_backend(cfg)
    check_paths(cfg)
    run = Path(cfg.run_dir)
    ckpt_root = run / "checkpoints"
    dc = cfg.distill

    # 1. Devices, ranks and the mesh (as training).
    device = init_distributed(pick_device(cfg.train.device))
    mesh = build_mesh(cfg.parallel, device_type=device.type)
    mesh.dims.check_training()
    rank = dist.get_rank() if dist.is_initialized() else 0
    dp_rank, dp_world = mesh.dp_rank, mesh.dims.dp
    local_batch = mesh.dims.local_batch_size(cfg.train.batch_size)
    torch.manual_seed(cfg.seed)

    # 2. The teacher's weights, once, into RUN/teacher (rank 0), then the checks that need them.
    if rank == 0:
        export_teacher(cfg)
    if dist.is_initialized():
        dist.barrier()
    check_weights_exist(cfg)

    # 3. Data: this dp rank's captions; the encoders only when the shards are not cached.
    loader = ShardLoader(cfg.data, batch_size=local_batch, rank=dp_rank, world=dp_world, seed=cfg.seed)
    cached = loader.kind == "cached"
    vae = None if cached else build_vae(cfg.vae)
    text = None if cached else build_text_encoder(cfg.text).to(device)
    if cached:
        check_cache(cfg, cached_settings(loader.refs[0]))
        first = loader.load(0, 0)
        latent_channels, text_dim = first["latents"].shape[0], first["context"].shape[-1]
        empty = load_empty_prompt(cfg.data.path)  # (L, D)
    else:
        latent_channels, text_dim = vae.latent_channels, text.dim
        empty = text.encode([""])[0]  # (L, D)
    empty = empty.to(device)
    check_shapes(cfg, latent_channels=latent_channels, text_dim=text_dim)

    # 4. Student (from the teacher's weights), its EMA, the frozen teacher, the optimizer. The teacher
    # and the EMA get the student's sequence parallelism and sharding.
    student = base_model(cfg).to(device)
    lora = cfg.lora.rank > 0
    if lora:
        student = apply_lora(student, cfg.lora)
    ema = None
    if cfg.ema.enabled:
        ema = copy.deepcopy(student).eval()
        requires_grad(ema, False)
        ema = shard_like_model(ema, mesh, cfg.parallel)
    teacher = load_model(cfg.init_from, dtype=torch.float32, attention=cfg.model.attention).to(device).eval()
    requires_grad(teacher, False)
    if mesh.dims.sp > 1:
        apply_sequence_parallel(teacher, mesh.sequence_layout())
    teacher = shard_like_model(teacher, mesh, cfg.parallel)
    student = parallelize(student, mesh, cfg.parallel)
    optimizer = build_optimizer(unwrap(student), cfg.optim)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.train.bf16 else nullcontext()

    # 5. Resume (as training): weights, EMA, optimizer, step, data position, RNG.
    def load(ckpt: Path) -> dict[str, Any]:
        return load_checkpoint(ckpt, model=unwrap(student), optimizer=optimizer, ema=ema, trainable_only=lora)

    state, resume_from = resume_checkpoint(cfg.resume, ckpt_root, load=load, warn=rank == 0)
    step = 0
    if state is not None:
        step = int(state["step"])
        loader.load_state_dict(state["data"])
        torch.set_rng_state(rng_from_json(state["rng"]))
    same_run = resume_from is None or resume_from.resolve().parent == ckpt_root.resolve()
    if rank == 0:
        branch = prepare_run(run, step=step, same_run=same_run and cfg.resume != "none")
        save_config(cfg, run / "config.yaml")
        if resume_from is not None:
            print(f"resumed from {resume_from} at step {step}", flush=True)
        if branch is not None:
            print(f"vdiff distill: {branch}", flush=True)
    if dist.is_initialized():
        dist.barrier()

    writer = None
    if rank == 0 and cfg.train.tensorboard:
        writer = open_tensorboard(run, purge_step=step + 1 if (run / "tb").is_dir() else None)
    bar = tqdm(
        total=cfg.train.steps, initial=step, disable=rank != 0 or not cfg.train.progress, desc="distill"
    )
    meter = Throughput(cfg.train.warmup_log_steps)

    def checkpoint() -> None:
        trainer_state = {"data": loader.state_dict(), "rng": rng_to_json(torch.get_rng_state())}
        try:
            save_checkpoint(
                ckpt_root,
                step=step,
                model=unwrap(student),
                optimizer=optimizer,
                ema=ema,
                trainer_state=trainer_state,
                trainable_only=lora,
            )
        except CheckpointException as e:
            raise checkpoint_cause(e) from e

    # The grids: the student's K + 1 levels, the teacher's K·M Euler steps through them.
    k_steps = dc.student_steps
    levels = student_sigmas(k_steps, shift=dc.shift)  # (K + 1,)
    fine = teacher_sigmas(student_steps=k_steps, teacher_steps=dc.teacher_steps, shift=dc.shift)  # (K·M + 1,)
    every = substeps(student_steps=k_steps, teacher_steps=dc.teacher_steps)

    def teacher_velocity(context: torch.Tensor) -> Any:
        def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            with autocast:
                return guided_velocity(teacher, x, sigma, context=context, empty=empty, guidance=dc.guidance)

        return velocity

    # 6. The loop.
    t0 = time.time()
    batches = iter(loader)
    last_saved = step
    while step < cfg.train.steps:
        t_step = time.perf_counter()
        # 6a. This rank's captions (B, L, D) and the latent shape (C, T, H, W) of its videos.
        batch = next(batches)
        with torch.no_grad():
            if cached:
                context = batch["context"].to(device)
                shape = tuple(batch["latents"].shape[1:])
            else:
                context = text.encode(batch["caption"])
                _, _, frames, height, width = batch["video"].shape
                f = vae.spatial_compression
                shape = (vae.latent_channels, vae.latent_frames(frames), height // f, width // f)

        # 6b. Noise per video, seeded by (seed, step, global sample index); the teacher's guided
        # solution from it, kept at the student's levels; one regression sample per segment.
        first_index = step * cfg.train.batch_size + dp_rank * local_batch
        seeds = [sample_seed(seed=cfg.seed, step=step, index=first_index + i) for i in range(len(context))]
        noise = initial_noise(shape, seeds).to(device)  # (B, C, T, H, W)
        t_teacher = time.perf_counter()
        states = teacher_trajectory(teacher_velocity(context), noise, sigmas=fine, every=every)
        t_teacher = time.perf_counter() - t_teacher
        x_k, sigma_k, target = segment_targets(states, levels)  # (K·B, C, T, H, W), (K·B,), like x_k

        # 6c. The student's one-step velocity on every segment, conditional prompt only.
        with autocast:
            pred = student(x_k, sigma_k * 1000, context.repeat(k_steps, 1, 1))  # (K·B, C, T, H, W)
        loss = F.mse_loss(pred.float(), target)

        # 6d. Backward, clip, step at the scheduled lr, EMA.
        lr = learning_rate(step, cfg.optim, total_steps=cfg.train.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = full_value(torch.nn.utils.clip_grad_norm_(student.parameters(), max_norm))
        optimizer.step()
        if ema is not None:
            update_ema(ema, unwrap(student), cfg.ema.decay)
        step += 1

        # 6e. Log and checkpoint.
        elapsed = time.time() - t0
        out_of_time = cfg.train.max_minutes > 0 and any_rank(elapsed > 60 * cfg.train.max_minutes)
        log_now = step % cfg.train.log_every == 0 or step == 1 or step == cfg.train.steps or out_of_time
        if log_now:
            loss_mean = mean_over(loss, mesh.group("dp"))
            memory = max_over_ranks(max_memory_mb(device), device)
            skipped, _ = bad_samples_over_ranks(loader, mesh.group("dp"))
        meter.add(time.perf_counter() - t_step, samples=cfg.train.batch_size, tokens=0)
        bar.update(1)
        if rank == 0 and log_now:
            samples_per_s, _ = meter.rates()
            row = {
                "step": step,
                "loss": loss_mean.item(),
                "lr": lr,
                "grad_norm": float(grad_norm),
                "samples_per_s": samples_per_s,
                "teacher_s": round(t_teacher, 4),
                "max_memory_mb": round(memory, 1),
                "time": round(elapsed, 3),
                "data_skipped": skipped,
            }
            write_metrics(run / METRICS_FILE, row, writer=writer)
            bar.set_postfix(loss=f"{row['loss']:.5f}", lr=f"{lr:.2e}")
            if not cfg.train.progress:
                print(json.dumps(row), flush=True)
        if cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0:
            checkpoint()
            last_saved = step
        if out_of_time:
            break

    # 7. Final checkpoint.
    loader.close()
    bar.close()
    if writer is not None:
        writer.close()
    if step != last_saved or latest_checkpoint(ckpt_root) is None:
        checkpoint()
    return run


USAGE = """usage: vdiff distill TEACHER_RUN --out DIR [--config FILE] [key.sub=value ...]
       torchrun --nproc_per_node=N -m pipelines.distill TEACHER_RUN --out DIR [key.sub=value ...]

Distils the training run TEACHER_RUN (frozen; its EMA weights by default) into a student that
samples in distill.student_steps steps without guidance (`vdiff sample --model DIR`). The config
starts from the teacher run's model, vae, text, data and flow sections; --config (e.g.
configs/distill-demo.yaml) and the overrides come on top. See docs/distillation.md."""


def main(argv: list[str] | None = None) -> int:
    """``vdiff distill TEACHER_RUN --out DIR [--config FILE] [key.sub=value ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\nconfig keys:")
        print("\n".join("  " + line for line in describe(DistillRunConfig)))
        return 0
    words, overrides = split_overrides(argv, value_options={"--out": 1, "--config": 1})
    out, config, positional = None, None, []
    i = 0
    while i < len(words):
        if words[i] in ("--out", "--config") and i + 1 < len(words):
            out, config = (words[i + 1], config) if words[i] == "--out" else (out, words[i + 1])
            i += 2
            continue
        positional.append(words[i])
        i += 1
    if len(positional) != 1 or out is None or positional[0].startswith("-"):
        print(f"vdiff distill: give one TEACHER_RUN and --out DIR\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        cfg = distill_config(positional[0], out=out, config=config, overrides=overrides)
    except ValueError as e:
        print(f"vdiff distill: {error_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        return report_error("vdiff distill", e)
    try:
        distill(cfg)
    except EXPECTED_ERRORS as e:
        if not dist.is_initialized() or dist.get_rank() == 0:
            return report_error("vdiff distill", e, where=cfg.run_dir)
        return 2 if is_user_error(e) else 1
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
