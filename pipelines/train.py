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
(:mod:`vdiff.training.config`), the checks before work, the base model and LoRA, resume and
branching, metrics and validation videos (:mod:`vdiff.training`), and the LoRA merge
(:func:`vdiff.runs.merge_run`).
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
from vdiff.config import describe, is_override, load_config, save_config
from vdiff.data import ShardLoader, cached_settings, load_empty_prompt
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
from vdiff.errors import EXPECTED_ERRORS, error_line, is_user_error, report_error
from vdiff.optim import build_optimizer, learning_rate
from vdiff.parallel import build_mesh
from vdiff.parallel.distributed import any_rank, destroy_distributed, full_value, init_distributed, mean_over
from vdiff.parallel.parallelize import parallelize, shard_like_model, unwrap
from vdiff.runs import merge_run
from vdiff.training import (
    BAD_SAMPLES_FILE,
    METRICS_FILE,
    Throughput,
    TrainConfig,
    apply_lora,
    bad_samples_over_ranks,
    base_model,
    check_before_work,
    check_cache,
    check_lora_can_learn,
    check_shapes,
    max_memory_mb,
    max_over_ranks,
    open_tensorboard,
    prepare_run,
    renamed_hint,
    report_bad_samples,
    resume_checkpoint,
    validation_videos,
    write_bad_samples,
    write_metrics,
    write_videos,
)
from vdiff.training.metrics import device_peak_flops, training_mfu

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


# ----------------------------------------------------------------------------- training


def train(cfg: TrainConfig) -> Path:
    """Run the training loop of ``cfg``; return the run folder."""
    check_before_work(cfg)
    run = Path(cfg.run_dir)
    ckpt_root = run / "checkpoints"

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
    def load(ckpt: Path) -> dict[str, Any]:
        return load_checkpoint(ckpt, model=unwrap(model), optimizer=optimizer, ema=ema, trainable_only=lora)

    state, resume_from = resume_checkpoint(cfg.resume, ckpt_root, load=load, warn=rank == 0)
    step = 0
    if state is not None:
        step = int(state["step"])
        loader.load_state_dict(state["data"])
        torch.set_rng_state(rng_from_json(state["rng"]))

    # 5b. The run folder. Resuming from a checkpoint older than the run's newest (or starting over in
    # a run that has checkpoints) begins a branch: what was written after it is set aside, not mixed in.
    same_run = resume_from is None or resume_from.resolve().parent == ckpt_root.resolve()
    skipped, bad_samples = bad_samples_over_ranks(loader, mesh.group("dp"))
    if rank == 0:
        branch = prepare_run(run, step=step, same_run=same_run and cfg.resume != "none")
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
    peak = device_peak_flops(device, override_tflops=cfg.train.peak_tflops)  # all ranks; None: unknown

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
            if peak is not None:
                sizes = dict(latent_shape=tuple(x0.shape[1:]), text_len=context.shape[1])
                row["mfu"] = training_mfu(samples_per_s, cfg.model, peak=peak, **sizes)
            write_metrics(run / METRICS_FILE, row, writer=writer)
            write_bad_samples(run / BAD_SAMPLES_FILE, bad_samples)
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
