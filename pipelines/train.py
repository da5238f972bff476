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

This file is the loop and its command line; what it builds on is library code: the config
(:mod:`vdiff.training.config`), the checks before work, the base model and LoRA, the steps the loop
shares with ``vdiff distill`` (:mod:`vdiff.training.loop`), resume and branching, metrics and
validation videos (:mod:`vdiff.training`), and the LoRA merge
(:func:`vdiff.runs.merge_run`).
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
from vdiff.config import describe, is_override, load_config, save_config
from vdiff.data import ShardLoader
from vdiff.diffusion import (
    add_noise,
    draw_training_noise,
    flow_sigmas,
    resolution_shift,
    sample_seed,
    sigma_to_timestep,
    velocity_target,
)
from vdiff.encoders import build_text_encoder, build_vae
from vdiff.errors import EXPECTED_ERRORS, report_error
from vdiff.optim import build_optimizer
from vdiff.parallel.parallelize import parallelize, unwrap
from vdiff.runs import merge_run
from vdiff.training import (
    BAD_SAMPLES_FILE,
    Checkpointer,
    TrainConfig,
    apply_lora,
    bad_samples_over_ranks,
    base_model,
    begin_run,
    build_ema,
    check_before_work,
    check_lora_can_learn,
    checked_empty_prompt,
    close_logging,
    log_due,
    log_row,
    log_values,
    metrics_row,
    open_logging,
    optimizer_step,
    out_of_time,
    renamed_hint,
    report_bad_samples,
    restore_state,
    resume_checkpoint,
    run_command,
    start_ranks,
    validation_videos,
    write_bad_samples,
    write_videos,
)
from vdiff.training.metrics import device_peak_flops, training_mfu

# ----------------------------------------------------------------------------- helpers


def num_tokens(latent_shape: torch.Size | tuple[int, ...], patch: tuple[int, int, int]) -> int:
    """Tokens of one latent (C, T, H, W) after the model's (t, h, w) patchify."""
    _, t, h, w = latent_shape
    return (t // patch[0]) * (h // patch[1]) * (w // patch[2])


# ----------------------------------------------------------------------------- training


def train(cfg: TrainConfig) -> Path:
    """Run the training loop of ``cfg``; return the run folder."""
    check_before_work(cfg)
    run = Path(cfg.run_dir)
    ckpt_root = run / "checkpoints"

    # 1. Devices, ranks and the mesh: torchrun's processes join one group (gloo on CPU, NCCL on
    # CUDA); the mesh splits them into data-parallel and sequence-parallel ranks (vdiff.parallel).
    device, mesh, rank = start_ranks(cfg)  # seeds torch with cfg.seed
    dp_rank, dp_world = mesh.dp_rank, mesh.dims.dp
    local_batch = mesh.dims.local_batch_size(cfg.train.batch_size)

    # 2. Data: this dp rank's slice of each global batch (sequence-parallel peers share dp_rank).
    loader = ShardLoader(cfg.data, batch_size=local_batch, rank=dp_rank, world=dp_world, seed=cfg.seed)
    cached = loader.kind == "cached"

    # 3. Frozen encoders (only what the data needs): latents and text embeddings.
    vae = None if cached else build_vae(cfg.vae).to(device)
    text = None if cached else build_text_encoder(cfg.text).to(device)
    # The data are checked against the model; the empty prompt's embedding is for caption dropout.
    empty = checked_empty_prompt(cfg, loader, vae=vae, text=text, from_file=cfg.flow.caption_dropout > 0)
    empty = empty.to(device)  # (L, D)

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
    ema = build_ema(model, cfg, mesh)  # None without EMA
    model = parallelize(model, mesh, cfg.parallel)  # the module to call (DDP wraps it)
    optimizer = build_optimizer(unwrap(model), cfg.optim)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.train.bf16 else nullcontext()

    # 5. Resume: weights, EMA, optimizer moments, step, data position, RNG. resume=auto takes the
    # newest checkpoint that loads; a damaged one is passed over with a warning naming what is wrong.
    def load(ckpt: Path) -> dict[str, Any]:
        return load_checkpoint(ckpt, model=unwrap(model), optimizer=optimizer, ema=ema, trainable_only=lora)

    state, resume_from = resume_checkpoint(cfg.resume, ckpt_root, load=load, warn=rank == 0)
    step = 0 if state is None else restore_state(state, loader)  # also the data position and RNG

    # 5b. The run folder. Resuming from a checkpoint older than the run's newest (or starting over in
    # a run that has checkpoints) begins a branch: what was written after it is set aside, not mixed in.
    skipped, bad_samples = bad_samples_over_ranks(loader, mesh.group("dp"))
    if rank == 0:
        begin_run(run, cfg, step=step, resume_from=resume_from, command="vdiff train")
        save_config(cfg, run / "config.yaml")
        write_bad_samples(run / BAD_SAMPLES_FILE, bad_samples)
    if dist.is_initialized():
        dist.barrier()

    # 5c. Logging: metrics.jsonl and TensorBoard (rank 0), a progress bar, throughput after warm-up.
    writer, bar, meter = open_logging(run, cfg.train, step=step, rank=rank, desc="train")
    peak = device_peak_flops(device, override_tflops=cfg.train.peak_tflops)  # all ranks; None: unknown

    # LoRA: adapters (+ their EMA and moments) only
    saver = Checkpointer(
        ckpt_root, unwrap(model), optimizer, ema, loader, trainable_only=lora, last_saved=step
    )

    # 6. The loop.
    t0 = time.time()
    batches = iter(loader)
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
        lr, grad_norm = optimizer_step(loss, model, optimizer, ema, step=step, cfg=cfg)
        step += 1

        # 6e. Log (loss reduced over ranks here when distributed) and checkpoint.
        elapsed = time.time() - t0
        stopping = out_of_time(elapsed, cfg.train)  # every rank agrees
        log_now = log_due(step, cfg.train, stopping=stopping)
        if log_now:  # the global batch's loss, ...: collectives every rank calls
            logged = log_values(loss, device=device, loader=loader, mesh=mesh)
        tokens = num_tokens(x0.shape[1:], cfg.model.patch_size) * cfg.train.batch_size  # all ranks
        meter.add(time.perf_counter() - t_step, samples=cfg.train.batch_size, tokens=tokens)
        bar.update(1)
        if log_now:
            samples_per_s, tokens_per_s = meter.rates()
        if rank == 0 and log_now:
            row = metrics_row(
                step=step,
                lr=lr,
                grad_norm=grad_norm,
                samples_per_s=samples_per_s,
                elapsed_s=elapsed,
                logged=logged,
                tokens_per_s=tokens_per_s,
                shift=round(shift, 4),
            )
            if peak is not None:
                sizes = dict(latent_shape=tuple(x0.shape[1:]), text_len=context.shape[1])
                row["mfu"] = training_mfu(samples_per_s, cfg.model, peak=peak, **sizes)
            log_row(run, row, writer=writer, bar=bar, progress=cfg.train.progress)
            write_bad_samples(run / BAD_SAMPLES_FILE, logged.bad_samples)
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
        saver.save_if_due(step, cfg.checkpoint.every)
        if stopping:
            break

    # 7. Final checkpoint.
    close_logging(loader, bar, writer)  # NOTE: stops the data workers now; the loader keeps its position
    saver.save_final(step)
    skipped, bad_samples = bad_samples_over_ranks(loader, mesh.group("dp"))
    if rank == 0:
        report_bad_samples(run, skipped, bad_samples)
    if lora and cfg.lora.merge_to:
        if rank == 0:
            merge_run(run, cfg.lora.merge_to)
            print(f"merged LoRA model written to {cfg.lora.merge_to}", flush=True)
        if dist.is_initialized():
            dist.barrier()
    return run


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

    def make_config() -> TrainConfig:
        return load_config(TrainConfig, path, overrides)

    return run_command("vdiff train", make_config, train, hint=renamed_hint)


if __name__ == "__main__":
    sys.exit(main())
