"""Few-step distillation: a frozen teacher's guided many-step ODE solution taught to a K-step student.

The method (``distill.method=trajectory``; why this one: docs/distillation.md) is regression onto
the teacher's guided trajectory at the student's noise levels, the segment form of progressive
and consistency-trajectory distillation:

1. the student's levels are ``σ_0 = 1 > σ_1 > … > σ_K = 0`` (:func:`student_sigmas`: K even steps,
   time-shifted, the grid :func:`vdiff.diffusion.flow_sigmas` gives);
2. from seeded noise at σ_0 the teacher integrates ``dx/dσ = v_u + g·(v_c − v_u)`` (classifier-free
   guidance, both branches in one batched forward) with M Euler sub-steps per student step, on the
   finer grid ``flow_sigmas(K·M, shift)`` that contains every student level
   (:func:`teacher_trajectory`), and keeps its states ``x_0 … x_K`` at the student levels;
3. segment k becomes one regression sample: at ``x_k`` and ``σ_k`` the student's velocity must
   carry ``x_k`` to the teacher's ``x_{k+1}`` in ONE Euler step, i.e. equal
   ``(x_{k+1} − x_k) / (σ_{k+1} − σ_k)`` (:func:`segment_targets`), under the conditional prompt
   only. Guidance is folded in: the student samples with one forward per step and guidance 1.

Sampling a student is plain Euler on :func:`student_sigmas` (:func:`student_sample`; ``vdiff sample``
reads K and the shift from the run's ``distill`` section).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from vdiff.config import ConfigError
from vdiff.diffusion import euler_step, flow_sigmas, sigma_to_timestep
from vdiff.training.config import EMAConfig, TrainConfig

TEACHER_DIR = "teacher"
"""the frozen teacher's weights inside a student run (a vdiff model folder; the run's ``init_from``)"""

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``v = model(x, timestep, context)`` with x (B, C, T, H, W), timestep (B,), context (B, L, D)"""


@dataclass
class DistillConfig:
    """What the student learns from the teacher (the ``distill`` section of a student run)."""

    teacher: str = ""
    """the teacher: a vdiff training run (its latest complete checkpoint), frozen; set by vdiff distill"""
    teacher_weights: Literal["auto", "ema", "model"] = "auto"
    """which weights of a teacher run: auto = the EMA when the run kept one"""
    method: Literal["trajectory"] = "trajectory"
    """trajectory: regress each student step onto the teacher's guided Euler solution over it"""
    student_steps: int = 4
    """K: the student's denoising steps (one forward each, no guidance)"""
    teacher_steps: int = 20
    """Euler steps of the teacher's guided solution (rounded up to a multiple of student_steps)"""
    guidance: float = 4.0
    """the teacher's classifier-free guidance scale, folded into the student"""
    shift: float = 3.0
    """time shift of the student's and the teacher's grids (the sampling shift of the teacher)"""

    def validate(self) -> None:
        if self.student_steps < 1 or self.teacher_steps < 1:
            raise ConfigError(
                f"distill: need student_steps >= 1 and teacher_steps >= 1; got student_steps="
                f"{self.student_steps}, teacher_steps={self.teacher_steps}"
            )
        if self.guidance < 1:
            raise ConfigError(f"distill.guidance must be >= 1 (1: no guidance), got {self.guidance}")
        if self.shift <= 0:
            raise ConfigError(f"distill.shift must be > 0, got {self.shift}")


def _student_ema() -> EMAConfig:
    return EMAConfig(enabled=True, decay=0.95)


@dataclass
class DistillRunConfig(TrainConfig):
    """A distillation run: a training run's keys (model, data, optim, parallel, …) plus ``distill``.

    ``init_from`` is set by ``vdiff distill`` to the teacher's copy inside the run (RUN/teacher), so
    the student starts from the teacher and a LoRA student's base is rebuilt from it.
    """

    ema: EMAConfig = field(default_factory=_student_ema)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> None:
        super().validate()
        if not self.distill.teacher:
            raise ConfigError("distill.teacher is empty; name the teacher run (vdiff distill TEACHER_RUN)")
        if self.train.sample_every > 0 or self.lora.merge_to:
            raise ConfigError(
                "train.sample_every and lora.merge_to are not supported by vdiff distill; sample the student "
                "with vdiff sample --model RUN, merge a LoRA student with vdiff train --merge-lora RUN OUT"
            )


# ----------------------------------------------------------------------------- the grids


def student_sigmas(steps: int, *, shift: float) -> torch.Tensor:
    """The student's ``steps + 1`` noise levels, 1 → 0 (float64): even in time, then shifted."""
    return flow_sigmas(steps, shift=shift)


def substeps(*, student_steps: int, teacher_steps: int) -> int:
    """M: teacher Euler steps per student step (``teacher_steps / student_steps`` rounded up)."""
    return max(1, math.ceil(teacher_steps / student_steps))


def teacher_sigmas(*, student_steps: int, teacher_steps: int, shift: float) -> torch.Tensor:
    """The teacher's finer grid ``flow_sigmas(K·M, shift)``; every M-th level is a student level."""
    m = substeps(student_steps=student_steps, teacher_steps=teacher_steps)
    return flow_sigmas(student_steps * m, shift=shift)


def unshifted_levels(steps: int) -> list[float]:
    """The ``steps`` starting levels of the student grid before the shift (1, 1 − 1/K, …, 1/K).

    diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=...)`` shifts them and
    appends σ = 0, which gives :func:`student_sigmas` exactly.
    """
    return [1.0 - i / steps for i in range(steps)]


# ----------------------------------------------------------------------------- the teacher


def guided_velocity(
    model: Forward,
    x: torch.Tensor,
    sigma: torch.Tensor,
    *,
    context: torch.Tensor,
    empty: torch.Tensor,
    guidance: float,
) -> torch.Tensor:
    """``v_u + g·(v_c − v_u)`` at x (B, C, T, H, W) and σ (B,); both branches in one forward of 2B.

    ``context`` (B, L, D) is the prompt's, ``empty`` (L, D) the unconditional prompt's embedding.
    """
    if guidance == 1:
        return model(x, sigma_to_timestep(sigma), context).float()
    b = x.shape[0]
    x2 = torch.cat([x, x])  # (2B, C, T, H, W)
    t2 = sigma_to_timestep(torch.cat([sigma, sigma]))  # (2B,)
    c2 = torch.cat([context, empty.to(context).expand_as(context)])  # (2B, L, D)
    v = model(x2, t2, c2).float()  # (2B, C, T, H, W)
    v_cond, v_uncond = v[:b], v[b:]
    return v_uncond + guidance * (v_cond - v_uncond)


@torch.no_grad()
def teacher_trajectory(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    *,
    sigmas: torch.Tensor,
    every: int,
) -> list[torch.Tensor]:
    """Euler-integrate ``dx/dσ = velocity(x, σ)`` from ``noise`` along ``sigmas`` (decreasing);
    return the states at levels 0, every, 2·every, … (the student levels), each like ``noise``."""
    if (len(sigmas) - 1) % every:
        raise ValueError(f"{len(sigmas) - 1} teacher steps are not a multiple of every={every}")
    levels = [float(s) for s in sigmas]
    x = noise.float()
    states = [x]
    for i in range(len(levels) - 1):
        sigma = torch.full((x.shape[0],), levels[i], dtype=torch.float32, device=x.device)
        x = euler_step(x, velocity(x, sigma), levels[i], levels[i + 1])
        if (i + 1) % every == 0:
            states.append(x)
    return states


def segment_targets(
    states: list[torch.Tensor], sigmas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One regression sample per (student step k, video b), k-major.

    ``states`` are the teacher's K + 1 states (B, C, T, H, W) at the student levels ``sigmas``
    (K + 1,). Returns the inputs ``x_k`` (K·B, C, T, H, W), their σ_k (K·B,) and the target
    velocities ``(x_{k+1} − x_k) / (σ_{k+1} − σ_k)`` (K·B, C, T, H, W).
    """
    k = len(states) - 1
    if len(sigmas) != k + 1:
        raise ValueError(f"{len(states)} states but {len(sigmas)} levels")
    b = states[0].shape[0]
    levels = [float(s) for s in sigmas]
    starts = torch.cat(states[:-1])  # (K·B, C, T, H, W)
    targets = torch.cat(
        [(states[i + 1] - states[i]) / (levels[i + 1] - levels[i]) for i in range(k)]
    )  # (K·B, C, T, H, W)
    sigma = torch.tensor(levels[:-1], dtype=torch.float32).repeat_interleave(b).to(starts.device)  # (K·B,)
    return starts, sigma, targets


# ----------------------------------------------------------------------------- the student


@torch.no_grad()
def student_sample(
    model: Forward, noise: torch.Tensor, *, context: torch.Tensor, sigmas: torch.Tensor
) -> torch.Tensor:
    """The student's K-step Euler sample from ``noise`` (B, C, T, H, W): one forward per step, no guidance."""
    velocity = lambda x, s: model(x, sigma_to_timestep(s), context).float()
    states = teacher_trajectory(velocity, noise, sigmas=sigmas, every=len(sigmas) - 1)
    return states[-1]
