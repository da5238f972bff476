"""Accuracy of an attention output against fp32 dense attention, as the SageAttention and
SpargeAttn papers report it: cosine similarity, relative L1 and RMSE over the whole tensor.
"""

from __future__ import annotations

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
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None
) -> torch.Tensor:
    """Exact softmax attention in fp32 on (B, H, N, D) tensors: the reference the metrics use."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    return torch.matmul(torch.softmax(s, dim=-1), v.float())  # (B, H, Nq, D)


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
    sharpness: float = 2.0,
    noise: float = 0.3,
    coarse: int = 8,
    offset: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K, V (B, H, frames*height*width, D) with the local correlation of video tokens.

    Each head has a smooth random feature field over the (t, h, w) grid (trilinear upsampling of
    a grid ``coarse`` times smaller per spatial axis, 2x in time), tokens in raster order as a
    video DiT lays them out; q and k are that field times ``sharpness`` plus independent noise,
    so a token attends mostly to tokens with similar features (its neighbours, and a few far
    ones), plus a per-head constant vector of scale ``offset`` (real Q/K activations carry such
    channel biases; K's is what SageAttention's smoothing removes); v is a second field.
    """
    g = torch.Generator().manual_seed(seed)
    grid = (max(1, frames // 2), max(1, height // coarse), max(1, width // coarse))

    def field() -> torch.Tensor:
        c = torch.randn(batch * heads, head_dim, *grid, generator=g)
        f = torch.nn.functional.interpolate(c, size=(frames, height, width), mode="trilinear")
        f = f.flatten(2).transpose(1, 2)  # (B*H, N, D)
        f = (f - f.mean(dim=1, keepdim=True)) / f.std(dim=1, keepdim=True).clamp_min(1e-6)
        return f.reshape(batch, heads, -1, head_dim)  # (B, H, N, D)

    base = field()
    q_bias = offset * torch.randn(batch, heads, 1, head_dim, generator=g)
    k_bias = offset * torch.randn(batch, heads, 1, head_dim, generator=g)
    q = q_bias + base * sharpness + noise * torch.randn(base.shape, generator=g)
    k = k_bias + base * sharpness + noise * torch.randn(base.shape, generator=g)
    v = field()
    return q.to(dtype), k.to(dtype), v.to(dtype)
