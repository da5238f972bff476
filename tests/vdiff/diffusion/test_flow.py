"""Flow-matching maths against closed forms and diffusers' flow schedulers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from vdiff.diffusion import (
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


@pytest.mark.parametrize("sigma", [0.0, 0.01, 0.3, 0.77, 1.0])
def test_euler_step_along_exact_velocity_recovers_x0(sigma: float) -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 5, 6, generator=g, dtype=torch.float64).unbind(0)
    x0, noise = x0[None], noise[None]
    s = torch.tensor([sigma], dtype=torch.float64)
    xt = add_noise(x0, noise, s)
    # endpoints: σ=0 is data, σ=1 is noise
    if sigma == 0.0:
        torch.testing.assert_close(xt, x0, rtol=0, atol=0)
    if sigma == 1.0:
        torch.testing.assert_close(xt, noise, rtol=0, atol=0)
    back = euler_step(xt, velocity_target(x0, noise), sigma, 0.0)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-12)


def test_time_shift_fixes_endpoints_and_is_monotone() -> None:
    grid = torch.linspace(0, 1, 1001, dtype=torch.float64)
    for s in (0.5, 1.0, 3.0, 5.0, 12.0):
        out = time_shift(grid, s)
        assert out[0] == 0.0 and out[-1] == 1.0
        assert bool((out[1:] > out[:-1]).all())
    torch.testing.assert_close(time_shift(grid, 1.0), grid)
    # s > 1 moves every interior level towards noise
    assert bool((time_shift(grid, 3.0)[1:-1] > grid[1:-1]).all())
    with pytest.raises(ValueError, match="> 0"):
        time_shift(grid, 0.0)


def test_resolution_shift_follows_sd3_sqrt_rule() -> None:
    assert resolution_shift(32760) == pytest.approx(3.0)
    assert resolution_shift(4 * 32760) == pytest.approx(6.0)
    assert resolution_shift(75600) == pytest.approx(3.0 * math.sqrt(75600 / 32760))
    assert resolution_shift(10) == 1.0  # clamped at min_shift
    assert resolution_shift(100, base_tokens=100, base_shift=2.0) == pytest.approx(2.0)


def test_logit_normal_moments_match_closed_form() -> None:
    # NOTE: n = 200_000 draws, fixed seed; tolerances are 5 standard errors of each estimate.
    n, mean, std = 200_000, 0.4, 0.8
    s = sample_logit_normal(n, mean=mean, std=std, generator=torch.Generator().manual_seed(1)).double()
    logit = torch.log(s) - torch.log1p(-s)
    assert abs(logit.mean().item() - mean) < 5 * std / math.sqrt(n)
    assert abs(logit.std().item() - std) < 5 * std / math.sqrt(2 * n)
    # E[sigmoid(mean + std z)] by 80-point Gauss-Hermite quadrature as the closed-form reference
    xs, ws = np.polynomial.hermite_e.hermegauss(80)
    ref_mean = float((ws * (1 / (1 + np.exp(-(mean + std * xs))))).sum() / ws.sum())
    ref_sq = float((ws * (1 / (1 + np.exp(-(mean + std * xs)))) ** 2).sum() / ws.sum())
    ref_std = math.sqrt(ref_sq - ref_mean**2)
    assert abs(s.mean().item() - ref_mean) < 5 * ref_std / math.sqrt(n)
    assert s.min() > 0 and s.max() < 1
    # mean 0 is symmetric about 1/2
    s0 = sample_logit_normal(n, generator=torch.Generator().manual_seed(2)).double()
    assert abs(s0.mean().item() - 0.5) < 5 * 0.21 / math.sqrt(n)


def test_sample_sigmas_is_shifted_logit_normal_and_deterministic() -> None:
    a = sample_sigmas(64, mean=0.0, std=1.0, shift=3.0, generator=torch.Generator().manual_seed(5))
    base = sample_logit_normal(64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, time_shift(base, 3.0))


def test_euler_sampler_integrates_linear_flow_exactly() -> None:
    # For a single data point x0, the exact velocity field is v(x, σ) = (x − x0) / σ, a linear ODE
    # whose solutions are straight lines; Euler integrates it exactly on any grid.
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    fn = lambda x, s: (x - x0) / s.view(-1, 1, 1, 1, 1)
    for sigmas in (flow_sigmas(7, shift=3.0), flow_sigmas(1), torch.tensor([1.0, 0.9, 0.2, 0.05, 0.0])):
        out = euler_sample(fn, noise.clone(), sigmas)
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)
    # constant velocity: x(σ) = x(1) + (σ − 1)·c, exact at every grid point
    c = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    out = euler_sample(lambda x, s: c, noise.clone(), flow_sigmas(4, shift=2.0, sigma_min=0.25))
    torch.testing.assert_close(out, noise + (time_shift(torch.tensor(0.25), 2.0).item() - 1) * c)


def test_caption_dropout_replaces_with_empty_embedding() -> None:
    ctx = torch.randn(1000, 3, 4)
    empty = torch.full((3, 4), 7.0)
    out, drop = drop_captions(ctx, empty, 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[drop], empty.expand(int(drop.sum()), 3, 4))
    assert torch.equal(out[~drop], ctx[~drop])
    # 1000 Bernoulli(0.3) draws: 5 standard errors
    assert abs(drop.float().mean().item() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 1000)
    assert not drop_captions(ctx, empty, 0.0)[1].any() and drop_captions(ctx, empty, 1.0)[1].all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        drop_captions(ctx, empty, 1.5)


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_diffusers_flow_match_euler_uses_our_convention(shift: float) -> None:
    sch = FlowMatchEulerDiscreteScheduler(shift=shift)
    sch.set_timesteps(6)
    # their timesteps are our σ·1000, their shift is our time_shift
    torch.testing.assert_close(sch.timesteps, sigma_to_timestep(sch.sigmas[:-1]), rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(timestep_to_sigma(sch.timesteps), sch.sigmas[:-1], rtol=1e-6, atol=1e-6)
    # NOTE: diffusers' evenly spaced grid ends at the *shifted* smallest training level, σ(1/1000)
    end = time_shift(torch.tensor(1 / 1000, dtype=torch.float64), shift).item()
    grid = torch.linspace(1.0, end, 6, dtype=torch.float64)
    torch.testing.assert_close(sch.sigmas[:-1].double(), time_shift(grid, shift), rtol=1e-5, atol=1e-6)
    # our Euler sampler on their sigmas reproduces their step() loop for the same velocity model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 2, 3, 3, generator=g)
    w = torch.randn(4, 4, generator=g) * 0.3
    model = lambda x, t: torch.einsum("oc,bcthw->bothw", w, x) * (t.view(-1, 1, 1, 1, 1) / 1000)
    ref = x.clone()
    for t in sch.timesteps:
        ref = sch.step(model(ref, t.view(1)), t, ref).prev_sample
    ours = euler_sample(lambda x, s: model(x, sigma_to_timestep(s)), x.clone(), sch.sigmas)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_diffusers_unipc_flow_sigmas_use_our_shift_and_timesteps() -> None:
    sch = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    sch.set_timesteps(8)
    grid = torch.linspace(1.0, 1.0 / 1000, 9, dtype=torch.float64)[:-1]
    torch.testing.assert_close(sch.sigmas[:-1].double(), time_shift(grid, 3.0), rtol=1e-5, atol=1e-6)
    # integer timesteps: σ·1000 truncated (and capped at 999)
    expect = sigma_to_timestep(sch.sigmas[:-1].double()).clamp(max=999).to(torch.int64)
    assert (sch.timesteps.to(torch.int64) - expect).abs().max() <= 1


def test_training_noise_depends_on_sample_seed_not_batch_split() -> None:
    x0 = torch.zeros(4, 3, 2, 4, 4)
    seeds = [sample_seed(seed=1, step=5, index=i) for i in range(4)]
    assert len(set(seeds)) == 4 and sample_seed(seed=1, step=6, index=0) not in seeds
    sigma, noise, drop = draw_training_noise(x0, seeds=seeds, shift=3.0, dropout=0.5)
    halves = [
        draw_training_noise(x0[:2], seeds=seeds[:2], shift=3.0, dropout=0.5),
        draw_training_noise(x0[2:], seeds=seeds[2:], shift=3.0, dropout=0.5),
    ]
    torch.testing.assert_close(torch.cat([h[0] for h in halves]), sigma, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([h[1] for h in halves]), noise, rtol=0, atol=0)
    assert torch.equal(torch.cat([h[2] for h in halves]), drop)
    assert sigma.shape == (4,) and noise.shape == x0.shape and bool(((sigma > 0) & (sigma < 1)).all())
    assert not torch.equal(noise[0], noise[1])
    assert not draw_training_noise(x0, seeds=seeds, dropout=0.0)[2].any()
