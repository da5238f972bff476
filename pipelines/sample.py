"""``vdiff sample``: text -> video with a vdiff training run or a diffusers-format Wan2.1 folder.

    vdiff sample --model RUN_OR_DIR (--prompt TEXT | --prompts FILE) --out DIR [key=value ...]
    torchrun --nproc_per_node=2 -m pipelines.sample ... parallel.cfg=2

Videos are written as ``DIR/{prompt}-{i}.mp4`` (VBench's naming, so ``vdiff eval DIR`` scores
the folder directly), with the resolved config in ``DIR/sample_config.yaml``. ``VideoPipeline
.__call__`` is the denoising loop written out, step by step, as in diffusers.

Determinism: video ``i`` of prompt ``p`` starts from noise drawn by a CPU generator seeded
with ``seed + p * videos_per_prompt + i``, so a video does not depend on the batch it was
sampled in, on the number of devices, or on which other prompts were given.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from vdiff.attention.policy import AttentionPolicy
from vdiff.config import ConfigError, describe, load_config, save_config, split_overrides
from vdiff.encoders import TextEncoderConfig, VAEConfig, VideoAutoencoder
from vdiff.errors import EXPECTED_ERRORS, report_error
from vdiff.parallel.config import ParallelConfig
from vdiff.parallel.distributed import destroy_distributed


@dataclass
class StepCacheConfig:
    """TeaCache-style step caching: reuse the transformer's residual while its input barely moves."""

    enabled: bool = False
    """skip the transformer blocks on steps whose timestep-modulated input changed little"""
    threshold: float = 0.1
    """recompute once the accumulated relative L1 change of the modulated input reaches this"""

    def validate(self) -> None:
        if self.threshold < 0:
            raise ConfigError(f"cache.threshold must be >= 0, got {self.threshold}")


def dense_policy() -> AttentionPolicy:
    """The default sampling attention: dense sdpa on every step."""
    return AttentionPolicy(backend="sdpa", dense_first_steps=1, dense_last_steps=1)


@dataclass
class SampleConfig:
    """How videos are sampled; every key can be given on the command line as key=value."""

    seed: int = 0
    """seed of video 0 of prompt 0; video i of prompt p uses seed + p * videos_per_prompt + i"""
    steps: int = 30
    """denoising steps"""
    guidance: float = 5.0
    """classifier-free guidance scale; 1 disables guidance (no unconditional pass)"""
    negative_prompt: str = ""
    """the unconditional branch's prompt"""
    frames: int = 16
    """frames per video"""
    height: int = 32
    """frame height in pixels"""
    width: int = 32
    """frame width in pixels"""
    fps: float = 8.0
    """frame rate of the written mp4 files"""
    sampler: Literal["euler", "unipc"] = "euler"
    """flow-matching solver: diffusers' FlowMatchEulerDiscreteScheduler or UniPCMultistepScheduler"""
    shift: float = 3.0
    """time shift of the sampling schedule (SD3/Wan; larger spends more steps at high noise)"""
    videos_per_prompt: int = 1
    """videos written per prompt (VBench uses 5)"""
    batch_size: int = 1
    """videos denoised together"""
    weights: Literal["ema", "model"] = "ema"
    """which weights of a vdiff training run to load"""
    checkpoint_step: int = -1
    """training step of the checkpoint to load from a run; -1 takes the latest"""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """compute dtype of the transformer"""
    device: str = "auto"
    """torch device; auto picks cuda:LOCAL_RANK when available, else cpu"""
    save_arrays: bool = False
    """also write each decoded video as float32 .npy (T, H, W, 3) in [-1, 1] for exact comparisons"""
    progress: bool = True
    """show a progress bar on rank 0"""
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """text encoder of a bare model folder (runs and Wan folders bring theirs; text.dtype applies to Wan's)"""
    vae: VAEConfig = field(default_factory=VAEConfig)
    """autoencoder of a bare model folder; vae.tiling / slicing / dtype also apply to a Wan2.1 folder's VAE"""
    cache: StepCacheConfig = field(default_factory=StepCacheConfig)
    """TeaCache-style step caching"""
    attention: AttentionPolicy = field(default_factory=dense_policy)
    """self-attention backend of the middle steps (e.g. sparse_sage) and the dense first/last steps"""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """ulysses, ring and cfg degrees (their product must equal the number of processes)"""

    def validate(self) -> None:
        for name in ("steps", "frames", "height", "width", "videos_per_prompt", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.guidance < 1:
            raise ConfigError(f"guidance must be >= 1 (1 disables guidance), got {self.guidance}")
        if self.shift <= 0:
            raise ConfigError(f"shift must be > 0, got {self.shift}")
        if self.fps <= 0:
            raise ConfigError(f"fps must be > 0, got {self.fps}")
        if self.checkpoint_step < -1:
            raise ConfigError(
                f"checkpoint_step must be >= 0, or -1 for the latest; got {self.checkpoint_step}"
            )
        if self.parallel.cfg not in (1, 2):
            raise ConfigError(f"parallel.cfg must be 1 or 2, got {self.parallel.cfg}")
        if self.parallel.cfg == 2 and self.guidance == 1:
            raise ConfigError("parallel.cfg=2 splits the guidance branches; it needs guidance > 1")


# ----------------------------------------------------------------------------------------------
# Schedulers
# ----------------------------------------------------------------------------------------------


def make_scheduler(sampler: str, *, shift: float):
    """diffusers' flow-matching scheduler for ``sampler`` ("euler" or "unipc") with time ``shift``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    if sampler == "unipc":
        # NOTE: the configuration Wan2.1's diffusers pipeline ships: flow sigmas, flow prediction.
        return UniPCMultistepScheduler(
            num_train_timesteps=1000,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=shift,
        )
    raise ValueError(f"sampler={sampler!r}: choose euler or unipc")


# ----------------------------------------------------------------------------------------------
# Step caching (TeaCache-style)
# ----------------------------------------------------------------------------------------------


class StepCache:
    """Decides per step and branch whether the transformer blocks run or their residual is reused.

    TeaCache (Liu et al., 2024): the change of the timestep-modulated input of the first
    block between steps predicts the change of the model output. The relative L1 change
    ``|m_i − m_prev|₁ / |m_prev|₁`` is accumulated; while the sum stays below ``threshold``
    the blocks are skipped and ``tokens + cached residual`` is used, where the residual is
    (blocks output − blocks input) of the last computed step. The first and last steps are
    always computed. One state is kept per guidance branch (cond, uncond).
    """

    def __init__(self, *, threshold: float, num_steps: int, group: Any = None) -> None:
        self.threshold = threshold
        self.num_steps = num_steps
        self.group = group
        self.state: dict[str, dict[str, Any]] = {}
        self.computed = 0
        self.skipped = 0

    def should_compute(self, branch: str, step: int, modulated: torch.Tensor) -> bool:
        """Record ``modulated`` for ``branch`` at ``step``; True when the blocks must run."""
        st = self.state.setdefault(branch, {"prev": None, "acc": 0.0, "residual": None})
        prev, st["prev"] = st["prev"], modulated.detach()
        if step == 0 or step == self.num_steps - 1 or prev is None or st["residual"] is None:
            st["acc"] = 0.0
            return True
        sums = torch.stack([(modulated - prev).abs().sum(), prev.abs().sum()]).double()
        if self.group is not None:
            # NOTE: sequence-parallel ranks hold different tokens; they must agree to skip.
            dist.all_reduce(sums, group=self.group)
        rel = float(sums[0] / sums[1].clamp_min(1e-12))
        st["acc"] += rel
        if st["acc"] >= self.threshold:
            st["acc"] = 0.0
            return True
        return False

    def store(self, branch: str, residual: torch.Tensor) -> None:
        """Keep the blocks' residual (output − input tokens) of a computed step."""
        self.state[branch]["residual"] = residual.detach()
        self.computed += 1

    def reuse(self, branch: str) -> torch.Tensor:
        """The residual of the last computed step of ``branch``."""
        self.skipped += 1
        return self.state[branch]["residual"]


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------


@dataclass
class ParallelGroups:
    """Process groups of a sampling run (None where that degree is 1)."""

    cfg: Any = None
    """the 2 ranks that hold the cond and uncond branch of the same videos"""
    cfg_rank: int = 0
    """0 computes the conditional branch, 1 the unconditional one"""
    sequence: Any = None
    """the ranks that share one video's tokens (Ulysses × ring); the step cache agrees across them"""
    layout: Any = None
    """the ``vdiff.parallel.sequence.SequenceLayout`` of those ranks (None without sequence parallelism)"""


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    v = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (3, T, H, W)
    return v.permute(1, 2, 3, 0).cpu().numpy()


def initial_noise(shape: tuple[int, ...], seeds: Sequence[int]) -> torch.Tensor:
    """(B, *shape) standard normal float32 noise; sample b comes from a CPU generator seeded ``seeds[b]``."""
    out = []
    for s in seeds:
        g = torch.Generator("cpu").manual_seed(int(s))
        out.append(torch.randn(shape, generator=g, dtype=torch.float32))
    return torch.stack(out)


def latent_shape(vae: VideoAutoencoder, *, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(C, T', H', W') of the latents of a frames × height × width video; a clear error if it does not fit."""
    f = vae.spatial_compression
    if height % f or width % f:
        raise ConfigError(f"height={height} and width={width} must be multiples of the VAE's compression {f}")
    return vae.latent_channels, vae.latent_frames(frames), height // f, width // f


class VideoPipeline:
    """Text -> video: text encoder, transformer, flow-matching scheduler and autoencoder.

    ``transformer(x, timestep, context)`` predicts the velocity ``noise − x0`` of latents
    x (B, C, T', H', W') at timestep σ·1000; ``text_encoder.encode(prompts)`` gives (B, L, D);
    ``vae.decode`` maps latents to pixels in [-1, 1].
    """

    def __init__(
        self,
        *,
        transformer: torch.nn.Module,
        text_encoder: Any,
        vae: VideoAutoencoder,
        groups: ParallelGroups | None = None,
    ) -> None:
        self.transformer = transformer.eval()
        self.text_encoder = text_encoder
        self.vae = vae
        self.groups = groups or ParallelGroups()
        self.last_cache_stats: tuple[int, int] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def guided_velocity(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        *,
        context: torch.Tensor,
        negative_context: torch.Tensor | None,
        guidance: float,
        run: Callable[..., torch.Tensor],
    ) -> torch.Tensor:
        """``v_u + g (v_c − v_u)``; with cfg-parallel each of the 2 ranks runs one branch."""
        if negative_context is None:
            return run(latents, timestep, context, branch="cond")
        if self.groups.cfg is not None:
            # NOTE: both ranks hold identical latents (same seeds); each runs one branch and the
            # two predictions are exchanged, so both ranks take the same solver step.
            cond = self.groups.cfg_rank == 0
            v = run(
                latents, timestep, context if cond else negative_context, branch="cond" if cond else "uncond"
            )
            both = [torch.empty_like(v), torch.empty_like(v)]
            dist.all_gather(both, v.contiguous(), group=self.groups.cfg)
            v_cond, v_uncond = both
        else:
            v_cond = run(latents, timestep, context, branch="cond")
            v_uncond = run(latents, timestep, negative_context, branch="uncond")
        return v_uncond + guidance * (v_cond - v_uncond)

    @torch.no_grad()
    def __call__(
        self,
        prompts: Sequence[str],
        *,
        seeds: Sequence[int],
        negative_prompt: str = "",
        steps: int = 30,
        guidance: float = 5.0,
        frames: int = 16,
        height: int = 32,
        width: int = 32,
        sampler: str = "euler",
        shift: float = 3.0,
        cache: StepCacheConfig | None = None,
        attention: AttentionPolicy | None = None,
        progress: bool = False,
        output_type: Literal["video", "latent"] = "video",
    ) -> torch.Tensor:
        """Sample one video per prompt (prompt b from ``seeds[b]``); returns (B, 3, T, H, W) in [-1, 1],
        or with ``output_type="latent"`` the final float32 latents (B, C, T', H', W') undecoded."""
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        device, dtype, b = self.device, self.dtype, len(prompts)

        # 1. Encode the prompts, and the negative prompt when guidance is on.
        context = self.text_encoder.encode(list(prompts)).to(device, dtype)  # (B, L, D)
        negative_context = None
        if guidance > 1:
            negative_context = self.text_encoder.encode([negative_prompt] * b).to(device, dtype)  # (B, L, D)

        # 2. Draw the initial noise, one seeded generator per video.
        shape = latent_shape(self.vae, frames=frames, height=height, width=width)  # (C, T', H', W')
        latents = initial_noise(shape, seeds).to(device)  # (B, C, T', H', W') float32

        # 3. Set the solver's timesteps: σ from 1 towards 0, time-shifted, t = σ·1000.
        scheduler = make_scheduler(sampler, shift=shift)
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps  # (steps,)

        # 4. Per-step options: the dense/sparse attention schedule and the step cache.
        step_cache = None
        if cache is not None and cache.enabled:
            step_cache = StepCache(
                threshold=cache.threshold, num_steps=len(timesteps), group=self.groups.sequence
            )
        policy = attention if attention is not None and attention.backend != attention.dense_backend else None
        previous_order = self.transformer.embed.token_order
        if policy is not None:
            # NOTE: with model.attention.token_order=auto a block-sparse policy backend runs every
            # step in tile order, the dense ones too: the step cache compares and reuses tokens
            # across steps, so the order must not change within a trajectory.
            model_attention = self.transformer.config.attention
            self.transformer.set_token_order(model_attention.resolved_token_order(also=(policy.backend,)))

        # 5. The denoising loop.
        try:
            for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress, leave=False)):
                # 5a. Every video of the batch is at the same timestep.
                timestep = t.expand(b).to(device=device, dtype=torch.float32)  # (B,)
                # 5b. This step's attention backend (dense on the first and last steps).
                if policy is not None:
                    set_step_attention(self.transformer, policy, step=i, num_steps=len(timesteps))
                # 5c. The guided velocity: cond and uncond branches (on one rank or two).
                v = self.guided_velocity(
                    latents.to(dtype),
                    timestep,
                    context=context,
                    negative_context=negative_context,
                    guidance=guidance,
                    run=self._runner(step_cache, i),
                ).float()  # (B, C, T', H', W')
                # 5d. One solver step from σ_i to σ_{i+1}, on float32 latents.
                latents = scheduler.step(v, t, latents, return_dict=False)[0]
        finally:
            restore_attention(self.transformer)
            self.transformer.set_token_order(previous_order)
        self.last_cache_stats = (step_cache.computed, step_cache.skipped) if step_cache else None

        # 6. Decode the latents to pixels.
        if output_type == "latent":
            return latents  # (B, C, T', H', W')
        return self.vae.decode(latents).float().clamp(-1, 1)  # (B, 3, T, H, W)

    def _runner(self, step_cache: StepCache | None, step: int) -> Callable[..., torch.Tensor]:
        model = self.transformer

        def run(x: torch.Tensor, timestep: torch.Tensor, ctx: torch.Tensor, *, branch: str) -> torch.Tensor:
            if step_cache is None:
                return model(x, timestep, ctx)
            return cached_forward(
                model, x, timestep, ctx, cache=step_cache, branch=branch, step=step, layout=self.groups.layout
            )

        return run


def set_step_attention(model: Any, policy: AttentionPolicy, *, step: int, num_steps: int) -> None:
    """Point every self-attention's ``attn_op`` at ``policy``'s backend for ``step``.

    The model's own op (possibly a sequence-parallel wrapper) is kept and restored by
    :func:`restore_attention`; under sequence parallelism the backend runs inside the wrapper.
    """
    import functools

    from vdiff.attention import attention as attention_fn

    backend = policy.backend_for(step, num_steps)
    for m in model.self_attentions():
        base = m.__dict__.setdefault("_base_attn_op", m.attn_op)
        # NOTE: under Ulysses the wrapper below tells the backend its heads (head_offset, num_heads).
        opts = policy.options_for(backend, layer_index=m.layer_index)
        op = functools.partial(attention_fn, backend=backend, **opts)
        if hasattr(base, "inner") and hasattr(base, "layout"):
            op = type(base)(inner=op, layout=base.layout, ring_backend=base.ring_backend)
        m.attn_op = op


def restore_attention(model: Any) -> None:
    """Undo :func:`set_step_attention`: every self-attention gets back the op it had."""
    for m in model.self_attentions():
        if "_base_attn_op" in m.__dict__:
            m.attn_op = m.__dict__.pop("_base_attn_op")


def local_valid_tokens(layout: Any, local_len: int) -> int:
    """How many of this rank's ``local_len`` sequence-parallel tokens are real (not padding)."""
    if layout is None:
        return local_len
    rank = dist.get_rank(layout.sp_group)
    return min(max(layout.valid_len - rank * local_len, 0), local_len)


def cached_forward(
    model: torch.nn.Module,
    x: torch.Tensor,
    timestep: torch.Tensor,
    context: torch.Tensor,
    *,
    cache: StepCache,
    branch: str,
    step: int,
    layout: Any = None,
) -> torch.Tensor:
    """``model(x, timestep, context)`` with TeaCache-style skipping of the blocks (see :class:`StepCache`).

    ``layout`` is the model's ``SequenceLayout`` under sequence parallelism (None otherwise).
    """
    from vdiff.models.layers import layer_norm_fp32

    e = model.embed(x, timestep, context)
    first = model.blocks[0]
    # NOTE: TeaCache's indicator is the first block's timestep-modulated input: it moves with
    # both the latents and the timestep embedding, and costs one LayerNorm.
    mod = first.modulation.float() + e.temb_mod.float()  # (B, 6, dim)
    modulated = layer_norm_fp32(e.tokens, first.norm1) * (1 + mod[:, 1:2]) + mod[:, 0:1]  # (B, N, dim)
    # NOTE: sequence-parallel padding tokens would add to the change; the decision must be the
    # one a single process takes on the real tokens.
    modulated = modulated[:, : local_valid_tokens(layout, modulated.shape[1])]  # (B, N_real, dim)
    if cache.should_compute(branch, step, modulated):
        tokens = e.tokens
        for block in model.blocks:
            tokens = block(tokens, context=e.context, temb_mod=e.temb_mod, rope=e.rope)
        cache.store(branch, tokens - e.tokens)
    else:
        tokens = e.tokens + cache.reuse(branch)
    return model.unembed(tokens, e.temb, e.grid, e.order)


# ----------------------------------------------------------------------------------------------
# Loading: a vdiff training run, a saved vdiff model, or a diffusers Wan2.1 folder
# ----------------------------------------------------------------------------------------------


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
    import json

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


def load_components(path: str | Path, cfg: SampleConfig) -> tuple[torch.nn.Module, Any, VideoAutoencoder]:
    """(transformer, text encoder, autoencoder) on CPU, from ``path``; nothing is downloaded."""
    from vdiff.encoders import TextEncoder, WanVAE, build_text_encoder, build_vae
    from vdiff.models import load_model

    path = Path(path)
    kind = model_kind(path)
    if kind == "run":
        return load_run(path, weights=cfg.weights, step=cfg.checkpoint_step)
    if kind == "diffusers":
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
    return load_model(path), build_text_encoder(cfg.text), build_vae(cfg.vae)


def load_run(path: Path, *, weights: str, step: int) -> tuple[torch.nn.Module, Any, VideoAutoencoder]:
    """The model (EMA or raw weights) and encoders of a vdiff training run ``path``.

    Only the ``weights`` entry of the DCP checkpoint is read (not the optimizer state).
    """
    from pipelines.train import TrainConfig
    from vdiff.checkpoint import checkpoint_keys, latest_checkpoint, load_state
    from vdiff.encoders import build_text_encoder, build_vae
    from vdiff.models import build_model

    run_cfg = load_config(TrainConfig, path / "config.yaml")
    ckpt = latest_checkpoint(path / "checkpoints") if step < 0 else path / "checkpoints" / f"step_{step:08d}"
    if ckpt is None or not (ckpt / ".metadata").is_file():
        raise FileNotFoundError(
            f"--model {path}: no complete checkpoint {'under checkpoints/' if step < 0 else ckpt}; "
            "train longer or pick checkpoint_step= from the step_ folders there (step_00000100 is step 100)"
        )
    keys = checkpoint_keys(ckpt)  # NOTE: never dcp.FileSystemReader: it unpickles .metadata unrestricted
    if not any(k.startswith(f"{weights}.") for k in keys):
        raise FileNotFoundError(
            f"{ckpt} holds no {weights!r} weights (the run had ema.enabled=false?); pass weights=model"
        )
    if run_cfg.lora.rank > 0:
        # NOTE: a LoRA run's checkpoints hold only adapters: rebuild its base and fold them in.
        from pipelines.train import merged_lora_model

        model = merged_lora_model(run_cfg, ckpt, weights=weights)
        return model, build_text_encoder(run_cfg.text), build_vae(run_cfg.vae)
    model = build_model(run_cfg.model, init=False)
    state = {weights: model.state_dict()}
    load_state(state, ckpt, no_dist=True)
    model.load_state_dict(state[weights])
    return model, build_text_encoder(run_cfg.text), build_vae(run_cfg.vae)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def read_prompts(prompt: Sequence[str] | None, prompts_file: str | None) -> list[str]:
    """Prompts from ``--prompt`` words and/or a ``--prompts`` file (one a line, or a VBench JSON suite)."""
    from eval.vbench import load_prompts

    out = list(prompt or [])
    if prompts_file:
        data = load_prompts(prompts_file)
        if isinstance(data, dict):
            raise ConfigError(
                f"--prompts {prompts_file}: a {{file: prompt}} map names files, not prompts; "
                "give a text file with one prompt a line or a VBench suite JSON"
            )
        out += [d["prompt_en"] for d in data]
    out = list(dict.fromkeys(p.strip() for p in out if p.strip()))  # NOTE: VBench names must be unique
    if not out:
        raise ConfigError("no prompts: pass --prompt TEXT or --prompts FILE")
    return out


def setup_distributed(parallel: ParallelConfig) -> tuple[int, ParallelGroups]:
    """Initialise torch.distributed under torchrun; return (rank, groups).

    Ranks are laid out cfg-major, then ring, then Ulysses innermost:
    ``rank = cfg_rank·S + ring_rank·U + ulysses_rank`` with S = ring·U sequence ranks.
    A script that calls this must end with ``vdiff.parallel.distributed.destroy_distributed()``
    (as :func:`main` does): a gloo rank that exits with its groups alive can abort at exit.
    """
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    u, r, c = parallel.ulysses, parallel.ring, parallel.cfg
    s = u * r
    if c * s != world:
        raise ConfigError(
            f"parallel.cfg={c} × ring={r} × ulysses={u} = {c * s} ranks, but {world} processes run; "
            f"launch torchrun --nproc_per_node={c * s} or change the degrees"
        )
    if world == 1:
        return 0, ParallelGroups()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    groups = ParallelGroups(cfg_rank=rank // s)

    def make(ranks: list[int]) -> Any:
        # NOTE: every rank must call new_group for every group, in the same order.
        g = dist.new_group(ranks) if len(ranks) > 1 else None
        return g if rank in ranks else "other"

    found: dict[str, Any] = {}
    for i in range(s):
        if (g := make([i + k * s for k in range(c)])) != "other":
            found["cfg"] = g
    for k in range(c):
        if (g := make(list(range(k * s, (k + 1) * s)))) != "other":
            found["sp"] = g
        for j in range(r):
            if (g := make([k * s + j * u + i for i in range(u)])) != "other":
                found["ulysses"] = g
        for i in range(u):
            if (g := make([k * s + j * u + i for j in range(r)])) != "other":
                found["ring"] = g
    groups.cfg = found.get("cfg")
    if s > 1:
        from vdiff.parallel.sequence import SequenceLayout

        groups.sequence = found["sp"]
        groups.layout = SequenceLayout(
            ulysses_group=found.get("ulysses"), ring_group=found.get("ring"), sp_group=found["sp"]
        )
    return rank, groups


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` -> the torch dtype."""
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda:LOCAL_RANK when CUDA is available, else cpu."""
    import os

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


@dataclass
class VideoJob:
    """One video to write: sample ``index`` of ``prompt``, from noise seeded ``seed``."""

    prompt: str
    index: int
    seed: int
    name: str
    """VBench file name ``{prompt}-{index}.mp4``"""


def video_jobs(prompts: Sequence[str], cfg: SampleConfig) -> list[VideoJob]:
    """Every video of a run in order; a prompt that cannot be a file name fails here, before sampling."""
    from eval.vbench import vbench_video_name

    jobs = []
    for k, prompt in enumerate(prompts):
        for i in range(cfg.videos_per_prompt):
            try:
                name = vbench_video_name(prompt, i)
            except ValueError as e:
                raise ConfigError(f"{e}; rephrase that prompt") from e
            # NOTE: most file systems cap a name at 255 bytes; VBench names are the whole prompt.
            if len(name.encode()) > 255:
                raise ConfigError(
                    f"prompt {prompt[:60]!r}... is {len(prompt.encode())} bytes; its VBench file name "
                    f"{prompt[:20]!r}...-{i}.mp4 exceeds the 255-byte file-name limit: shorten the prompt"
                )
            jobs.append(VideoJob(prompt, i, cfg.seed + k * cfg.videos_per_prompt + i, name))
    return jobs


def sample_to_folder(
    pipe: VideoPipeline, prompts: Sequence[str], cfg: SampleConfig, out: Path, *, rank: int = 0
) -> list[Path]:
    """Sample ``cfg.videos_per_prompt`` videos of each prompt into ``out`` (rank 0 writes); return paths."""
    from vdiff.io.video import write_mp4

    jobs = video_jobs(prompts, cfg)
    written = []
    bar = tqdm(total=len(jobs), desc="videos", disable=not (cfg.progress and rank == 0))
    for start in range(0, len(jobs), cfg.batch_size):
        batch = jobs[start : start + cfg.batch_size]
        videos = pipe(
            [j.prompt for j in batch],
            seeds=[j.seed for j in batch],
            negative_prompt=cfg.negative_prompt,
            steps=cfg.steps,
            guidance=cfg.guidance,
            frames=cfg.frames,
            height=cfg.height,
            width=cfg.width,
            sampler=cfg.sampler,
            shift=cfg.shift,
            cache=cfg.cache,
            attention=cfg.attention,
            progress=cfg.progress and rank == 0,
        )  # (B, 3, T, H, W)
        for job, video in zip(batch, videos):
            path = out / job.name
            if rank == 0:
                write_mp4(path, to_uint8(video), cfg.fps)
                if cfg.save_arrays:
                    np.save(path.with_suffix(".npy"), video.permute(1, 2, 3, 0).float().cpu().numpy())
            written.append(path)
        bar.update(len(batch))
    bar.close()
    return written


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


def _parser() -> argparse.ArgumentParser:
    keys = "\n".join("  " + line for line in describe(SampleConfig))
    p = argparse.ArgumentParser(
        prog="vdiff sample",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Text -> video; writes DIR/{prompt}-{i}.mp4 (VBench naming) and DIR/sample_config.yaml.",
        epilog=f"config keys (key=value):\n{keys}",
    )
    p.add_argument(
        "--model", required=True, help="vdiff training run, vdiff model folder or diffusers Wan2.1 folder"
    )
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts", help="text file with one prompt a line, or a VBench suite JSON")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="YAML config (e.g. configs/sample.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``vdiff sample``; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options = {"--model": 1, "--prompt": 1, "--prompts": 1, "--out": 1, "--config": 1}
    words, overrides = split_overrides(argv, value_options=options)
    args = _parser().parse_args(words)
    out = Path(args.out)
    try:
        cfg = load_config(SampleConfig, args.config, overrides)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; name a folder for the videos")
        prompts = read_prompts(args.prompt, args.prompts)
        video_jobs(prompts, cfg)
        rank, groups = setup_distributed(cfg.parallel)
        transformer, text, vae = load_components(args.model, cfg)
        pipe = make_pipeline(transformer, text, vae, cfg=cfg, groups=groups)
        check_video_size(pipe, cfg)
    except EXPECTED_ERRORS as e:
        return report_error("vdiff sample", e)
    t0 = time.perf_counter()
    try:
        paths = sample_to_folder(pipe, prompts, cfg, out, rank=rank)
        if rank == 0:
            save_config(cfg, out / "sample_config.yaml")
    except OSError as e:  # NOTE: disk full, permission: the environment's failure, naming the path
        code = report_error("vdiff sample", e, where=out) if rank == 0 else 1
        destroy_distributed()
        return code
    if rank == 0:
        print(f"wrote {len(paths)} videos to {out} in {time.perf_counter() - t0:.1f} s")
    # NOTE: barrier first (destroy_distributed): once a rank of the 4-rank cfg x ulysses test
    # aborted at exit ("terminate called without an active exception") when it tore gloo down
    # while rank 0 was still writing; the training pipeline leaves the same way.
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
