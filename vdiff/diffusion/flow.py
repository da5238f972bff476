"""Rectified-flow (flow-matching) maths as pure functions.

Convention (the one Wan2.1, SD3 and diffusers' flow schedulers share):

* noise level σ ∈ [0, 1]; σ = 0 is data, σ = 1 is pure noise;
* forward process ``x_t = (1 − σ)·x0 + σ·noise``;
* the model predicts the velocity ``dx_t/dσ = noise − x0``;
* the model's timestep is ``t = σ · 1000`` (diffusers' ``num_train_timesteps``);
* sampling integrates from σ = 1 down to σ = 0: ``x ← x + (σ_next − σ)·v``.

Training draws σ from a logit-normal distribution (``σ = sigmoid(mean + std·z)``,
SD3 §3.1) and then applies the time shift ``σ' = sσ / (1 + (s − 1)σ)`` (SD3 eq. 23, Wan's
``shift``). Larger or longer videos need more noise to destroy the same amount of signal,
so ``s`` grows with the token count: :func:`resolution_shift` uses SD3's rule
``s = s_base · sqrt(N / N_base)`` for N latent tokens (frames × height × width after
patchification) relative to a base of ``N_base`` tokens at which ``s_base`` is used. With
the defaults (N_base = 32 760, the tokens of Wan2.1 480p 81 frames; s_base = 3, Wan's 480p
shift), 720p 81 frames (75 600 tokens) gets s ≈ 4.6, close to Wan's hand-picked 5.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

NUM_TRAIN_TIMESTEPS = 1000
"""diffusers' ``num_train_timesteps``: timestep = σ · 1000"""

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``v = fn(x, sigma)`` with x (B, ...) and sigma (B,)"""


def _bcast(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) matching ``like``'s rank."""
    return sigma.reshape(sigma.shape[0], *([1] * (like.ndim - 1))).to(like.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 − σ)·x0 + σ·noise`` with sigma (B,) and x0, noise (B, ...)."""
    s = _bcast(sigma, x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target ``noise − x0`` (= dx_t/dσ)."""
    return noise - x0


def time_shift(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3/Wan time shift ``sσ / (1 + (s − 1)σ)``: fixes 0 and 1, monotone for s > 0."""
    if shift <= 0:
        raise ValueError(f"time shift must be > 0, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def resolution_shift(
    num_tokens: int, *, base_tokens: int = 32760, base_shift: float = 3.0, min_shift: float = 1.0
) -> float:
    """SD3's resolution-dependent shift ``max(min_shift, s_base · sqrt(N / N_base))``."""
    if num_tokens <= 0 or base_tokens <= 0:
        raise ValueError(f"token counts must be positive, got {num_tokens=} {base_tokens=}")
    return max(min_shift, base_shift * math.sqrt(num_tokens / base_tokens))


def sample_logit_normal(
    n: int, *, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` draws of ``sigmoid(mean + std·z)``, z ~ N(0, 1), as float32 (n,)."""
    z = torch.randn(n, generator=generator, dtype=torch.float32)
    return torch.sigmoid(mean + std * z)


def sample_sigmas(
    n: int,
    *,
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Training noise levels: logit-normal draws, then the time shift. Shape (n,)."""
    return time_shift(sample_logit_normal(n, mean=mean, std=std, generator=generator), shift)


def sigma_to_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """The model's timestep input, ``σ · 1000`` (diffusers' scheduler timesteps)."""
    return sigma * NUM_TRAIN_TIMESTEPS


def timestep_to_sigma(timestep: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`sigma_to_timestep`."""
    return timestep / NUM_TRAIN_TIMESTEPS


def drop_captions(
    context: torch.Tensor,
    empty: torch.Tensor,
    p: float,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each sample's context (B, L, D) by the empty-prompt embedding with probability p.

    ``empty`` is (L, D) or (1, L, D). Returns the new context and the (B,) bool mask of
    dropped samples. Training with dropped captions lets one model give both the conditional
    and unconditional predictions that classifier-free guidance combines.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption dropout probability must be in [0, 1], got {p}")
    b = context.shape[0]
    drop = torch.rand(b, generator=generator) < p  # (B,)
    empty = empty.reshape(1, *context.shape[1:]).to(context)
    out = torch.where(drop.to(context.device).view(b, 1, 1), empty.expand_as(context), context)
    return out, drop


def flow_sigmas(num_steps: int, *, shift: float = 1.0, sigma_min: float = 0.0) -> torch.Tensor:
    """Sampling grid: ``num_steps + 1`` levels from 1 to ``sigma_min`` (evenly, then shifted)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return time_shift(torch.linspace(1.0, sigma_min, num_steps + 1, dtype=torch.float64), shift)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One explicit Euler step of ``dx/dσ = v`` from σ to σ_next."""
    return x + (sigma_next - sigma) * v


def euler_sample(fn: VelocityFn, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Integrate ``dx/dσ = fn(x, σ)`` along ``sigmas`` (decreasing) with Euler steps.

    ``x`` is the sample at ``sigmas[0]``; ``fn`` gets σ as a (B,) tensor. With diffusers'
    ``FlowMatchEulerDiscreteScheduler``, passing ``scheduler.sigmas`` here reproduces its
    ``step`` loop exactly (see tests).
    """
    levels = [float(s) for s in sigmas]
    for s, s_next in itertools.pairwise(levels):
        sigma = torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device)
        x = euler_step(x, fn(x, sigma), s, s_next)
    return x


def sample_seed(*, seed: int, step: int, index: int) -> int:
    """The seed of one training sample's random draws: a function of (run seed, step, sample index)."""
    return ((seed * 1_000_003 + step) * 1_000_033 + index) % (2**63 - 1)


def draw_training_noise(
    x0: torch.Tensor,
    *,
    seeds: list[int],
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample seeded σ (B,), noise like x0 (B, ...), and caption-drop mask (B,) bool.

    Sample i draws from its own generator seeded with ``seeds[i]`` (see :func:`sample_seed`), so
    a global batch gets the same randomness however it is split across data-parallel ranks and
    a resumed run redraws exactly what an uninterrupted one would.
    """
    if len(seeds) != x0.shape[0]:
        raise ValueError(f"need one seed per sample: {len(seeds)} seeds for a batch of {x0.shape[0]}")
    sigmas, drops, noises = [], [], []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        sigmas.append(sample_sigmas(1, mean=mean, std=std, shift=shift, generator=g))
        drops.append(torch.rand(1, generator=g) < dropout)
        gd = torch.Generator(device=x0.device).manual_seed(s)
        noises.append(torch.randn(x0.shape[1:], generator=gd, device=x0.device, dtype=torch.float32))
    sigma = torch.cat(sigmas).to(x0.device)  # (B,)
    noise = torch.stack(noises).to(x0.dtype)  # (B, ...)
    return sigma, noise, torch.cat(drops).to(x0.device)
