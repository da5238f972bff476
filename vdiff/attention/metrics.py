"""Accuracy of an attention output against fp32 dense attention, as the SageAttention and
SpargeAttn papers report it: cosine similarity, relative L1 and RMSE over the whole tensor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class AttentionError:
    """How far an attention output is from the reference (all computed in fp64)."""

    cos_sim: float
    """cosine similarity of the flattened outputs (1.0 = same direction)"""
    rel_l1: float
    """relative L1: sum|O - O'| / sum|O| with O the reference"""
    rmse: float
    """root mean squared error sqrt(mean((O - O')^2))"""

    def as_dict(self) -> dict[str, float]:
        """The three figures as a plain dict (for JSON and printing)."""
        return asdict(self)


def dense_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    max_scores: int = 1 << 26,
) -> torch.Tensor:
    """Exact softmax attention in fp32 on (B, H, N, D) tensors: the reference the metrics use.

    Computed in runs of query rows whose score matrix holds at most ``max_scores`` elements, so
    long sequences fit in memory (N = 16384 with 12 heads would need 13 GB at once); each row's
    softmax still sees every key, so the result does not depend on the split.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    b, h, n_q = q.shape[:3]
    kt, vf = k.float().transpose(-1, -2), v.float()  # (B, H, D, Nk), (B, H, Nk, D)
    rows = max(1, max_scores // max(1, b * h * k.shape[2]))
    outs = []
    for start in range(0, n_q, rows):
        s = torch.matmul(q[:, :, start : start + rows].float(), kt) * scale  # (B, H, rows, Nk)
        outs.append(torch.matmul(torch.softmax(s, dim=-1), vf))  # (B, H, rows, D)
    return torch.cat(outs, dim=2)  # (B, H, Nq, D)


def relative_l1(out: torch.Tensor, ref: torch.Tensor, *, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """sum|out - ref| / sum|ref| over ``dims`` (all dims when None), in fp64."""
    diff = (out.double() - ref.double()).abs()
    ref_abs = ref.double().abs()
    if dims is None:
        return diff.sum() / ref_abs.sum().clamp_min(1e-30)
    return diff.sum(dim=dims) / ref_abs.sum(dim=dims).clamp_min(1e-30)


def attention_error(out: torch.Tensor, ref: torch.Tensor) -> AttentionError:
    """Cosine similarity, relative L1 and RMSE of ``out`` against ``ref`` (same shape)."""
    if out.shape != ref.shape:
        raise ValueError(f"attention_error: shapes differ, out {tuple(out.shape)} vs ref {tuple(ref.shape)}")
    o, r = out.double().flatten(), ref.double().flatten()
    cos = torch.dot(o, r) / (o.norm() * r.norm()).clamp_min(1e-30)
    return AttentionError(
        cos_sim=float(cos),
        rel_l1=float(relative_l1(o, r)),
        rmse=float((o - r).pow(2).mean().sqrt()),
    )


def video_like_qkv(
    *,
    batch: int,
    heads: int,
    frames: int,
    height: int,
    width: int,
    head_dim: int,
    length: tuple[float, float, float] = (1.5, 6.0, 6.0),
    sharpness: tuple[float, float] = (6.0, 14.0),
    noise: float = 0.3,
    offset: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K, V (B, H, frames*height*width, D), contiguous, whose attention is local in space-time.

    Tokens sit on the (t, y, x) grid in raster order, as a video DiT lays them out. Each head
    draws ``D/2`` random frequencies ω ~ N(0, I) and gives the token at position p (in units of
    ``length`` = (frames, rows, columns) per unit) the features φ(p) = [cos(ω·p), sin(ω·p)] / √(D/2),
    so φ(p)·φ(p') = mean cos(ω·(p - p')), a Monte-Carlo estimate of the Gaussian kernel
    exp(-|p - p'|² / 2): 1 for the token itself, ~0.6 one length unit away, noise of about
    1/√D far away. q = k = a·φ with a² = β·√D, so the softmax logit between two tokens is
    β·kernel: head h's β runs linearly over ``sharpness`` (small β: broad attention; large:
    mostly within one length unit). Each of q and k adds independent Gaussian ``noise`` and a
    per-head constant vector of scale ``offset`` (real Q/K carry such channel biases; K's is
    what SageAttention's smoothing removes). v is a smooth random field (trilinear upsampling of
    a grid ``length`` times coarser) plus as much white noise, normalised per channel.
    """
    g = torch.Generator().manual_seed(seed)
    t, y, x = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    pos = torch.stack([t, y, x], dim=-1).reshape(-1, 3).float() / torch.tensor(length)  # (N, 3)
    n, m = pos.shape[0], head_dim // 2
    omega = torch.randn(batch, heads, m, 3, generator=g)  # (B, H, D/2, 3)
    angle = torch.einsum("bhmc,nc->bhnm", omega, pos)  # (B, H, N, D/2)
    phi = torch.cat([angle.cos(), angle.sin()], dim=-1) / math.sqrt(m)  # (B, H, N, 2*(D/2))
    if phi.shape[-1] != head_dim:  # odd head_dim: one zero channel
        phi = torch.nn.functional.pad(phi, (0, head_dim - phi.shape[-1]))
    beta = torch.linspace(sharpness[0], sharpness[1], heads).view(1, heads, 1, 1)
    amp = (beta * math.sqrt(head_dim)).sqrt()
    shape = (batch, heads, n, head_dim)
    q = (
        amp * phi
        + noise * torch.randn(shape, generator=g)
        + offset * torch.randn(batch, heads, 1, head_dim, generator=g)
    )
    k = (
        amp * phi
        + noise * torch.randn(shape, generator=g)
        + offset * torch.randn(batch, heads, 1, head_dim, generator=g)
    )
    coarse = tuple(max(1, round(s / ell)) for s, ell in zip((frames, height, width), length))
    c = torch.randn(batch * heads, head_dim, *coarse, generator=g)
    field = torch.nn.functional.interpolate(c, size=(frames, height, width), mode="trilinear")
    v = field.flatten(2).transpose(1, 2).reshape(shape) + torch.randn(shape, generator=g)  # (B, H, N, D)
    v = (v - v.mean(dim=2, keepdim=True)) / v.std(dim=2, keepdim=True).clamp_min(1e-6)
    return q.to(dtype).contiguous(), k.to(dtype).contiguous(), v.to(dtype).contiguous()
