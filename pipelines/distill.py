"""Distil a trained run into a few-step student: ``vdiff distill TEACHER_RUN --out DIR [key=value ...]``.

The loop reads like ``pipelines/train.py``, shares its steps (:mod:`vdiff.training.loop`) and
writes the same run folder (``config.yaml``, ``metrics.jsonl``, ``tb/``, ``bad_samples.jsonl``,
``checkpoints/step_{step:08d}/``, exact ``resume=auto``, LoRA or full, FSDP2 / DDP / Ulysses /
ring on torchrun), plus ``DIR/teacher/``: the frozen teacher's weights as a
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

import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vdiff.checkpoint import load_checkpoint
from vdiff.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    describe,
    merge_mappings,
    read_yaml_mapping,
    read_yaml_section,
    save_config,
    split_overrides,
)
from vdiff.data import ShardLoader
from vdiff.diffusion import sample_seed
from vdiff.encoders import build_text_encoder, build_vae
from vdiff.models import load_model, save_model
from vdiff.optim import build_optimizer
from vdiff.parallel.parallelize import parallelize, shard_like_model, unwrap
from vdiff.parallel.sequence import apply_sequence_parallel
from vdiff.runs import load_run_model
from vdiff.sampling import initial_noise
from vdiff.training import (
    BAD_SAMPLES_FILE,
    Checkpointer,
    apply_lora,
    bad_samples_over_ranks,
    base_model,
    begin_run,
    build_ema,
    check_paths,
    check_ring_backend,
    check_weights_exist,
    checked_empty_prompt,
    close_logging,
    log_due,
    log_row,
    log_values,
    metrics_row,
    open_logging,
    optimizer_step,
    out_of_time,
    report_bad_samples,
    requires_grad,
    restore_state,
    resume_checkpoint,
    run_command,
    start_ranks,
    write_bad_samples,
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


def teacher_sections(teacher: Path) -> dict[str, Any]:
    """The :data:`TEACHER_SECTIONS` of the teacher run's ``config.yaml``."""
    path = teacher / "config.yaml"
    if not path.is_file() or not (teacher / "checkpoints").is_dir():
        raise ConfigError(
            f"TEACHER_RUN {teacher}: not a vdiff training run (config.yaml + checkpoints/); name the folder "
            "`vdiff train` wrote"
        )
    raw = read_yaml_mapping(path)
    return {k: raw[k] for k in TEACHER_SECTIONS if k in raw}


def read_yaml(path: str) -> dict[str, Any]:
    """A ``--config`` file as a mapping."""
    if not Path(path).is_file():
        raise ConfigError(f"--config {path} does not exist")
    return read_yaml_mapping(path, f"--config {path}")


def distill_config(
    teacher: str | Path, *, out: str, config: str | None = None, overrides: list[str] | None = None
) -> DistillRunConfig:
    """The student run's config: the teacher's sections, then ``config``, then ``overrides``."""
    teacher = Path(teacher)
    data: dict[str, Any] = teacher_sections(teacher)
    if config:
        data = merge_mappings(data, read_yaml(config))
    data = merge_mappings(data, {"run_dir": out, "distill": {"teacher": str(teacher)}})
    data = apply_overrides(data, overrides or [])
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
    section = read_yaml_section(path, "distill")
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
    device, mesh, rank = start_ranks(cfg)  # seeds torch with cfg.seed
    dp_rank, dp_world = mesh.dp_rank, mesh.dims.dp
    local_batch = mesh.dims.local_batch_size(cfg.train.batch_size)

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
    empty = checked_empty_prompt(cfg, loader, vae=vae, text=text).to(device)  # (L, D), for guidance

    # 4. Student (from the teacher's weights), its EMA, the frozen teacher, the optimizer. The teacher
    # and the EMA get the student's sequence parallelism and sharding.
    student = base_model(cfg).to(device)
    lora = cfg.lora.rank > 0
    if lora:
        student = apply_lora(student, cfg.lora)
    ema = build_ema(student, cfg, mesh)  # None without EMA
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
    step = 0 if state is None else restore_state(state, loader)
    skipped, bad_samples = bad_samples_over_ranks(loader, mesh.group("dp"))
    if rank == 0:
        begin_run(run, cfg, step=step, resume_from=resume_from, command="vdiff distill")
        save_config(cfg, run / "config.yaml")
        write_bad_samples(run / BAD_SAMPLES_FILE, bad_samples)
    if dist.is_initialized():
        dist.barrier()
    writer, bar, meter = open_logging(run, cfg.train, step=step, rank=rank, desc="distill")

    saver = Checkpointer(
        ckpt_root, unwrap(student), optimizer, ema, loader, trainable_only=lora, last_saved=step
    )

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
        lr, grad_norm = optimizer_step(loss, student, optimizer, ema, step=step, cfg=cfg)
        step += 1

        # 6e. Log and checkpoint.
        elapsed = time.time() - t0
        stopping = out_of_time(elapsed, cfg.train)
        log_now = log_due(step, cfg.train, stopping=stopping)
        if log_now:
            logged = log_values(loss, device=device, loader=loader, mesh=mesh)
        meter.add(time.perf_counter() - t_step, samples=cfg.train.batch_size, tokens=0)
        bar.update(1)
        if rank == 0 and log_now:
            samples_per_s, _ = meter.rates()
            row = metrics_row(
                step, lr, grad_norm, samples_per_s, elapsed, logged, teacher_s=round(t_teacher, 4)
            )
            log_row(run, row, writer=writer, bar=bar, progress=cfg.train.progress, digits=5)
            write_bad_samples(run / BAD_SAMPLES_FILE, logged.bad_samples)
        saver.save_if_due(step, cfg.checkpoint.every)
        if stopping:
            break

    # 7. Final checkpoint.
    close_logging(loader, bar, writer)
    saver.save_final(step)
    skipped, bad_samples = bad_samples_over_ranks(loader, mesh.group("dp"))
    if rank == 0:
        report_bad_samples(run, skipped, bad_samples, command="vdiff distill")
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

    def make_config() -> DistillRunConfig:
        return distill_config(positional[0], out=out, config=config, overrides=overrides)

    return run_command("vdiff distill", make_config, distill)


if __name__ == "__main__":
    sys.exit(main())
