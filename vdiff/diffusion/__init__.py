"""Flow-matching maths (noising, targets, σ sampling and shift, caption dropout, Euler sampling)."""

from vdiff.diffusion.flow import (
    NUM_TRAIN_TIMESTEPS,
    add_noise,
    draw_training_noise,
    drop_captions,
    euler_sample,
    euler_step,
    flow_sigmas,
    resolution_shift,
    sample_logit_normal,
    sample_seed,
    sample_sigmas,
    sigma_to_timestep,
    time_shift,
    timestep_to_sigma,
    velocity_target,
)

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "add_noise",
    "draw_training_noise",
    "drop_captions",
    "euler_sample",
    "euler_step",
    "flow_sigmas",
    "resolution_shift",
    "sample_logit_normal",
    "sample_seed",
    "sample_sigmas",
    "sigma_to_timestep",
    "time_shift",
    "timestep_to_sigma",
    "velocity_target",
]
