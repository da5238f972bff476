"""Validation videos during training: the model's samples for fixed prompts and noise, every
``train.sample_every`` steps, written to ``RUN/samples/step_{step:08d}/`` (``NN.mp4`` and ``prompts.txt``).

They use the plain Euler flow-matching sampler without guidance, from noise seeded per prompt,
so successive rounds show the same videos as training goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vdiff.diffusion import euler_sample, sigma_to_timestep
from vdiff.io.files import atomic_write_text
from vdiff.io.video import write_mp4
from vdiff.sampling import initial_noise, to_uint8


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
    x = initial_noise(latent_shape, seeds).to(context.device)  # (P, C, T, H, W)

    def velocity(xt: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with autocast:
            return model(xt, sigma_to_timestep(sigma), context).float()

    x0 = euler_sample(velocity, x, sigmas)
    return None if vae is None else vae.decode(x0).float().clamp(-1, 1)


def write_videos(videos: torch.Tensor, folder: Path, *, prompts: list[str], fps: float) -> None:
    """``folder/NN.mp4`` for each (3, T, H, W) video in ``videos``, and ``folder/prompts.txt``."""
    for i, video in enumerate(videos):
        write_mp4(folder / f"{i:02d}.mp4", to_uint8(video), fps)
    atomic_write_text(folder / "prompts.txt", "".join(f"{i:02d}\t{p}\n" for i, p in enumerate(prompts)))
