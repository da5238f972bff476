"""Building blocks of the VideoDiT: embeddings, 3D RoPE, attention and the transformer block.

The maths follows Wan2.1 (as implemented by diffusers' ``WanTransformer3DModel``): sinusoidal
timestep features ``[cos, sin]``, a SiLU MLP for time and a GELU(tanh) MLP for text, 3D RoPE on
interleaved channel pairs, RMSNorm over all heads for queries and keys, and a per-block
``modulation`` table (Wan's ``scale_shift_table``) added to a projection of the time embedding to
give shift/scale/gate for self-attention and the feed-forward network. Norms and the residual
adds run in float32 whatever the compute dtype, as in Wan.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vdiff.attention import AttentionConfig, attention, attention_op

AttentionOp = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def timestep_features(timestep: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[cos(t w), sin(t w)]``, ``w_i = max_period^(-i / (dim/2))``: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    )  # (half,)
    angles = timestep.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (B, dim)


def rope_table(
    grid: tuple[int, int, int],
    dims: tuple[int, int, int],
    *,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-token RoPE table (N, head_dim // 2, 2) of (cos, sin) for a (T, H, W) token grid.

    Channel pairs of a head are split into t, h and w parts of ``dims // 2`` pairs each; part
    ``a`` rotates by ``pos_a * theta^(-2j / dims[a])``. Tokens are ordered t-major, as the patch
    embedding flattens them. Angles are computed in float64, then cos/sin stored as float32.
    """
    parts = []
    for axis, (n, d) in enumerate(zip(grid, dims)):
        inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)  # (d/2,)
        pos = torch.arange(n, dtype=torch.float64, device=device)  # (n,)
        angles = torch.outer(pos, inv_freq)  # (n, d/2)
        shape = [1, 1, 1, d // 2]
        shape[axis] = n
        parts.append(angles.view(shape).expand(*grid, d // 2))  # (T, H, W, d/2)
    angles = torch.cat(parts, dim=-1).reshape(math.prod(grid), -1)  # (N, head_dim/2)
    return torch.stack([angles.cos(), angles.sin()], dim=-1).float()  # (N, head_dim/2, 2)


def absolute_position_table(
    grid: tuple[int, int, int], dim: int, *, base: float = 100.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Fixed sin-cos embedding (N, dim) of each token's absolute (t, h, w) grid position.

    ``dim`` is split into t, h and w parts as RoPE splits a head (``dim - 4·(dim//6)``,
    ``2·(dim//6)``, ``2·(dim//6)``); a part of width d holds ``[sin(pos·ω), cos(pos·ω)]`` with
    ``ω_j = base^(-j / (d/2))``. Tokens are ordered t-major, as the patch embedding flattens them.
    """
    hw = 2 * (dim // 6)
    parts = []
    for axis, (n, d) in enumerate(zip(grid, (dim - 2 * hw, hw, hw))):
        half = d // 2
        freq = base ** (-torch.arange(half, dtype=torch.float64, device=device) / half)  # (d/2,)
        angles = torch.outer(torch.arange(n, dtype=torch.float64, device=device), freq)  # (n, d/2)
        emb = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (n, d)
        shape = [1, 1, 1, d]
        shape[axis] = n
        parts.append(emb.view(shape).expand(*grid, d))  # (T, H, W, d)
    return torch.cat(parts, dim=-1).reshape(math.prod(grid), dim).float()  # (N, dim)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of x (B, N, H, D) by the table ``rope`` (N, D/2, 2)."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, N, H, D/2, 2)
    x1, x2 = pairs[..., 0], pairs[..., 1]  # (B, N, H, D/2)
    cos = rope[None, :, None, :, 0]  # (1, N, 1, D/2)
    sin = rope[None, :, None, :, 1]  # (1, N, 1, D/2)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, N, H, D/2, 2)
    return out.flatten(-2).to(x.dtype)  # (B, N, H, D)


def layer_norm_fp32(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm computed in float32; returns float32 (callers cast where Wan casts)."""
    weight = norm.weight.float() if norm.weight is not None else None
    bias = norm.bias.float() if norm.bias is not None else None
    return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps)


class MLP(nn.Module):
    """``fc2(act(fc1(x)))``: used for the time embedding, the text projection and the FFN."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, act: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = act
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention with Wan's QK-RMSNorm; self-attention (3D RoPE) or cross-attention.

    ``attn_op(q, k, v) -> out`` on (B, H, N, D) is a plain attribute: parallel wrappers
    (Ulysses, ring) and sparse/quantized backends replace it without touching ``forward``.
    ``layer_index`` lets per-layer calibration data be looked up; ``cross`` tells the two kinds apart.
    """

    def __init__(
        self, dim: int, num_heads: int, *, eps: float, layer_index: int, attn_op: AttentionOp, cross: bool
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.layer_index = layer_index
        self.attn_op = attn_op
        self.cross = cross
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        # NOTE: Wan normalises q and k over all heads together (one RMSNorm of width dim).
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def forward(
        self, x: torch.Tensor, *, rope: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, N, dim); self-attention takes rope (N, D/2, 2), cross-attention context (B, L, dim)."""
        src = x if context is None else context
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))  # (B, N, H, D)
        k = self.norm_k(self.k(src)).unflatten(-1, (self.num_heads, -1))  # (B, L, H, D)
        v = self.v(src).unflatten(-1, (self.num_heads, -1))  # (B, L, H, D)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = self.attn_op(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, H, N, D)
        out = out.transpose(1, 2).flatten(2).to(x.dtype)  # (B, N, H*D)
        return self.o(out)


def cross_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Default op of cross-attention: the reference ``sdpa`` backend."""
    return attention(q, k, v, backend="sdpa")  # type: ignore[return-value]


class DiTBlock(nn.Module):
    """Self-attention, cross-attention and FFN with Wan's time modulation.

    ``temb_mod`` (B, 6, dim) plus the block's ``modulation`` table gives, in order, shift,
    scale and gate for self-attention, then shift, scale and gate for the FFN.
    """

    def __init__(
        self,
        *,
        self_attn: Attention,
        cross_attn: Attention,
        ffn: MLP,
        dim: int,
        eps: float,
        cross_attn_norm: bool,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.self_attn = self_attn
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=True) if cross_attn_norm else None
        self.cross_attn = cross_attn
        self.norm3 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ffn = ffn
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self, x: torch.Tensor, *, context: torch.Tensor, temb_mod: torch.Tensor, rope: torch.Tensor
    ) -> torch.Tensor:
        """x (B, N, dim), context (B, L, dim), temb_mod (B, 6, dim), rope (N, D/2, 2) -> (B, N, dim)."""
        mod = self.modulation.float() + temb_mod.float()  # (B, 6, dim)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=1)  # each (B, 1, dim)

        h = (layer_norm_fp32(x, self.norm1) * (1 + scale1) + shift1).to(x.dtype)
        x = (x.float() + self.self_attn(h, rope=rope) * gate1).to(x.dtype)

        h = layer_norm_fp32(x, self.norm2).to(x.dtype) if self.norm2 is not None else x
        x = x + self.cross_attn(h, context=context)

        h = (layer_norm_fp32(x, self.norm3) * (1 + scale2) + shift2).to(x.dtype)
        return (x.float() + self.ffn(h).float() * gate2).to(x.dtype)


def build_block(
    *,
    dim: int,
    num_heads: int,
    ffn_dim: int,
    eps: float,
    cross_attn_norm: bool,
    layer_index: int,
    attention_cfg: AttentionConfig,
) -> DiTBlock:
    """One transformer block whose self-attention uses ``attention_cfg``'s backend for its layer."""
    return DiTBlock(
        self_attn=Attention(
            dim,
            num_heads,
            eps=eps,
            layer_index=layer_index,
            attn_op=attention_op(attention_cfg, layer_index=layer_index),
            cross=False,
        ),
        cross_attn=Attention(
            dim, num_heads, eps=eps, layer_index=layer_index, attn_op=cross_attention_op, cross=True
        ),
        ffn=MLP(dim, ffn_dim, dim, act=nn.GELU(approximate="tanh")),
        dim=dim,
        eps=eps,
        cross_attn_norm=cross_attn_norm,
    )
