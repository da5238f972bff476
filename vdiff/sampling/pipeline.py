"""``VideoPipeline``: text -> video, its ``__call__`` the denoising loop written out as in diffusers.

Determinism: video b starts from noise drawn by a CPU generator seeded ``seeds[b]``
(:func:`initial_noise`), so a video does not depend on the batch it was sampled in, on the
number of devices, or on which other prompts were given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from vdiff.attention.policy import AttentionPolicy
from vdiff.config import ConfigError
from vdiff.encoders import VideoAutoencoder
from vdiff.sampling.cache import StepCache, cached_forward
from vdiff.sampling.config import StepCacheConfig
from vdiff.sampling.distributed import ParallelGroups
from vdiff.sampling.step_attention import policy_in_use, restore_attention, set_step_attention


def make_scheduler(sampler: str, *, shift: float) -> Any:
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
        schedule: Literal["default", "uniform"] = "default",
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
        # NOTE: "uniform" (a distilled student's grid): levels 1, 1 − 1/steps, …, 1/steps, which the
        # scheduler shifts and ends with σ = 0; the default grid ends at σ = 0.001 before the 0.
        sigmas = [1.0 - i / steps for i in range(steps)] if schedule == "uniform" else None
        scheduler.set_timesteps(steps, device=device, sigmas=sigmas)
        timesteps = scheduler.timesteps  # (steps,)

        # 4. Per-step options: the dense/sparse attention schedule and the step cache.
        step_cache = None
        if cache is not None and cache.enabled:
            step_cache = StepCache(
                threshold=cache.threshold, num_steps=len(timesteps), group=self.groups.sequence
            )
        policy = policy_in_use(attention)
        previous_order = self.transformer.embed.token_order
        if policy is not None:
            self._set_trajectory_token_order(policy)

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

    def _set_trajectory_token_order(self, policy: AttentionPolicy) -> None:
        """The token order the whole trajectory runs in when ``policy`` switches backends."""
        # NOTE: with model.attention.token_order=auto a block-sparse policy backend runs every
        # step in tile order, the dense ones too: the step cache compares and reuses tokens
        # across steps, so the order must not change within a trajectory.
        model_attention = self.transformer.config.attention
        self.transformer.set_token_order(model_attention.resolved_token_order(also=(policy.backend,)))

    def _runner(self, step_cache: StepCache | None, step: int) -> Callable[..., torch.Tensor]:
        model = self.transformer

        def run(x: torch.Tensor, timestep: torch.Tensor, ctx: torch.Tensor, *, branch: str) -> torch.Tensor:
            if step_cache is None:
                return model(x, timestep, ctx)
            return cached_forward(
                model, x, timestep, ctx, cache=step_cache, branch=branch, step=step, layout=self.groups.layout
            )

        return run
