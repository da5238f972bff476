"""VideoDiT: a Wan2.1-compatible video diffusion transformer, and its builders.

The forward pass is three public pieces so that parallelism can be applied from outside
(torchtitan-style) without touching ``forward``::

    e = model.embed(x, timestep, context)   # Embedded(tokens, rope, context, temb, temb_mod, grid, order)
    tokens = e.tokens
    for block in model.blocks:
        tokens = block(tokens, context=e.context, temb_mod=e.temb_mod, rope=e.rope)
    v = model.unembed(tokens, e.temb, e.grid, e.order)

``embed`` and ``unembed`` are submodules, so a sequence-parallel wrapper can shard the tokens and
the per-token RoPE table in a forward hook of ``embed`` and gather them in a pre-hook of
``unembed``, and FSDP can wrap each piece. See docs/model.md.

Token order: raster (t, y, x) by default; with ``attention.token_order`` resolving to ``tiles``
(the default for the block-sparse backends) ``embed`` returns tokens and RoPE table in tile
order (:func:`vdiff.attention.token_order.tile_order`) and ``unembed`` restores raster order
before unpatchifying. Attention, norms and MLPs are permutation-equivariant, so the output is
the same up to rounding; only the block-sparse mask, built from runs of consecutive tokens,
sees the difference.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vdiff.attention import AttentionConfig, attention_op
from vdiff.attention.token_order import inverse_order, tile_order
from vdiff.models.config import (
    ModelConfig,
    model_config,
    videodit_demo_config,
    videodit_tiny_config,
    videodit_wan21_1_3b_config,
    videodit_wan21_14b_config,
)
from vdiff.models.layers import (
    MLP,
    Attention,
    DiTBlock,
    absolute_position_table,
    build_block,
    layer_norm_fp32,
    rope_table,
    timestep_features,
)


class Embedded(NamedTuple):
    """What ``model.embed`` returns: everything the blocks and ``unembed`` need."""

    tokens: torch.Tensor
    """(B, N, dim) patch tokens, t-major (raster) or in tile order (see ``order``)"""
    rope: torch.Tensor
    """(N, head_dim // 2, 2) per-token RoPE (cos, sin), float32; shard along dim 0 with the tokens"""
    context: torch.Tensor
    """(B, L, dim) projected text embeddings"""
    temb: torch.Tensor
    """(B, dim) time embedding (modulates the output head)"""
    temb_mod: torch.Tensor
    """(B, 6, dim) time projection (modulates every block)"""
    grid: tuple[int, int, int]
    """(T', H', W') token grid"""
    order: torch.Tensor | None = None
    """(N,) raster index of each token of ``tokens`` and ``rope`` (tile order), None for raster order"""


class Embedder(nn.Module):
    """Latents, timesteps and text embeddings -> tokens, RoPE table and conditioning."""

    def __init__(
        self,
        *,
        patch: nn.Conv3d,
        time_embed: MLP,
        time_proj: nn.Linear,
        text_embed: MLP,
        freq_dim: int,
        rope_dims: tuple[int, int, int],
        rope_theta: float,
        abs_pos_embed: bool = False,
        token_order: str = "raster",
        tile: int = 8,
    ) -> None:
        super().__init__()
        self.patch = patch
        self.time_embed = time_embed
        self.time_proj = time_proj
        self.text_embed = text_embed
        self.freq_dim = freq_dim
        self.rope_dims = rope_dims
        self.rope_theta = rope_theta
        self.abs_pos_embed = abs_pos_embed
        # NOTE: plain attributes, not buffers: VideoDiT.set_attention keeps them in step with
        # the config, and they are no part of the weights.
        self.token_order = token_order  # "raster" or "tiles"
        self.tile = tile

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Token grid (T', H', W') of a latent shape (B, C, T, H, W); clear error if it does not patch."""
        if len(shape) != 5:
            raise ValueError(f"VideoDiT expects latents shaped (B, C, T, H, W), got {tuple(shape)}")
        if shape[1] != self.patch.in_channels:
            raise ValueError(f"VideoDiT expects {self.patch.in_channels} latent channels, got {shape[1]}")
        p = self.patch.kernel_size
        if any(s % q for s, q in zip(shape[2:], p)):
            raise ValueError(
                f"latent (T, H, W)={tuple(shape[2:])} is not divisible by the patch size {tuple(p)}"
            )
        return shape[2] // p[0], shape[3] // p[1], shape[4] // p[2]

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> Embedded:
        """x (B, C, T, H, W), timestep (B,) or scalar in [0, 1000), context (B, L, text_dim)."""
        grid = self.grid(tuple(x.shape))
        text_dim = self.text_embed.fc1.in_features
        if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != text_dim:
            raise ValueError(
                f"context must be text embeddings shaped (B, L, text_dim)=({x.shape[0]}, L, {text_dim}), "
                f"got {tuple(context.shape)}; check the text encoder matches model.text_dim"
            )
        # NOTE: inputs follow the weights' dtype (fp32 text embeddings into a bf16 model work).
        x, context = x.to(self.patch.weight.dtype), context.to(self.text_embed.fc1.weight.dtype)
        tokens = self.patch(x).flatten(2).transpose(1, 2).contiguous()  # (B, N, dim)
        if self.abs_pos_embed:
            # NOTE: RoPE gives attention relative positions only; a small model trained briefly
            # then cannot tell where in the frame (or when in the clip) content belongs.
            pos = absolute_position_table(grid, tokens.shape[-1], device=x.device)  # (N, dim)
            tokens = tokens + pos.to(tokens.dtype)
        rope = rope_table(grid, self.rope_dims, theta=self.rope_theta, device=x.device)  # (N, D/2, 2)
        order = None
        if self.token_order == "tiles":
            # NOTE: permuted here, after the raster-order position embedding, so that sequence
            # parallelism (a forward hook on embed) shards tokens and RoPE table in tile order.
            order = tile_order(grid, tile=self.tile, device=x.device)  # (N,)
            tokens, rope = tokens.index_select(1, order), rope.index_select(0, order)
        elif self.token_order != "raster":
            raise ValueError(f"Embedder.token_order must be 'raster' or 'tiles', got {self.token_order!r}")
        timestep = torch.as_tensor(timestep, device=x.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(x.shape[0])  # (B,)
        if timestep.shape != (x.shape[0],):
            raise ValueError(
                f"timestep must be a scalar or shaped (B,)=({x.shape[0]},), got {tuple(timestep.shape)}"
            )
        feats = timestep_features(timestep, self.freq_dim).to(
            self.time_embed.fc1.weight.dtype
        )  # (B, freq_dim)
        temb = self.time_embed(feats).to(context.dtype)  # (B, dim)
        temb_mod = self.time_proj(F.silu(temb)).unflatten(1, (6, -1))  # (B, 6, dim)
        return Embedded(tokens, rope, self.text_embed(context), temb, temb_mod, grid, order)


class OutputHead(nn.Module):
    """Modulated LayerNorm, linear projection to patch pixels, and unpatchify to (B, C, T, H, W)."""

    def __init__(self, *, dim: int, out_channels: int, patch_size: tuple[int, int, int], eps: float) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.out_channels = out_channels
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.proj = nn.Linear(dim, out_channels * math.prod(patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(
        self,
        tokens: torch.Tensor,
        temb: torch.Tensor,
        grid: tuple[int, int, int],
        order: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens (B, N, dim), temb (B, dim), grid (T', H', W') -> (B, C, T'*pt, H'*ph, W'*pw).

        ``order`` (N,) is ``Embedded.order``: the raster index of each token (None: raster already).
        """
        shift, scale = (self.modulation.float() + temb.float().unsqueeze(1)).chunk(2, dim=1)  # (B, 1, dim)
        h = (layer_norm_fp32(tokens, self.norm) * (1 + scale) + shift).to(tokens.dtype)
        out = self.proj(h)  # (B, N, pt*ph*pw*C)
        if order is not None:
            # NOTE: norm and projection act per token, so raster order is restored after the
            # projection, on pt*ph*pw*C channels instead of dim.
            out = out.index_select(1, inverse_order(order))  # (B, N, pt*ph*pw*C), raster
        (t, hh, w), (pt, ph, pw), c = grid, self.patch_size, self.out_channels
        out = out.reshape(out.shape[0], t, hh, w, pt, ph, pw, c)  # (B, T', H', W', pt, ph, pw, C)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, T', pt, H', ph, W', pw)
        return out.reshape(out.shape[0], c, t * pt, hh * ph, w * pw)  # (B, C, T, H, W)


class VideoDiT(nn.Module):
    """Video diffusion transformer: ``model(x, timestep, context)`` -> velocity shaped like x."""

    def __init__(
        self, *, embed: Embedder, blocks: list[DiTBlock], unembed: OutputHead, config: ModelConfig
    ) -> None:
        super().__init__()
        self.embed = embed
        self.blocks = nn.ModuleList(blocks)
        self.unembed = unembed
        self.config = config

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, C, T, H, W) latents, timestep (B,) in [0, 1000), context (B, L, text_dim) -> like x.

        The output has x's shape and the weights' dtype.
        """
        e = self.embed(x, timestep, context)
        tokens = e.tokens
        for block in self.blocks:
            tokens = block(tokens, context=e.context, temb_mod=e.temb_mod, rope=e.rope)
        return self.unembed(tokens, e.temb, e.grid, e.order)

    def self_attentions(self) -> Iterator[Attention]:
        """Every self-attention module, in layer order (each has ``attn_op`` and ``layer_index``)."""
        for m in self.modules():
            if isinstance(m, Attention) and not m.cross:
                yield m

    def set_attention(self, cfg: AttentionConfig) -> None:
        """Point every self-attention layer at the backend ``cfg`` chooses for it, in its token order."""
        cfg.validate()
        for m in self.self_attentions():
            m.attn_op = attention_op(cfg, layer_index=m.layer_index)
        self.set_token_order(cfg.resolved_token_order(), tile=cfg.tile)
        self.config = dataclasses.replace(self.config, attention=cfg)

    def set_token_order(self, order: str, *, tile: int | None = None) -> None:
        """Run the tokens in ``order``: ``raster``, or ``tiles`` of ``tile`` x ``tile`` tokens; ops unchanged.

        For callers that replace the attention ops themselves (the sampling pipeline's per-step
        policy); :meth:`set_attention` calls it with the config's resolved order.
        """
        if order not in ("raster", "tiles"):
            raise ValueError(f"token order must be 'raster' or 'tiles', got {order!r}")
        self.embed.token_order = order
        if tile is not None:
            self.embed.tile = tile

    @torch.no_grad()
    def init_weights(self) -> None:
        """Wan2.1's initialisation: xavier linears with zero bias, N(0, 0.02) embedding MLPs, zero output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.embed.patch.weight.flatten(1))  # as a (dim, C*pt*ph*pw) matrix
        nn.init.zeros_(self.embed.patch.bias)
        for mlp in (self.embed.time_embed, self.embed.text_embed):
            for lin in (mlp.fc1, mlp.fc2):
                nn.init.normal_(lin.weight, std=0.02)
        # NOTE: a zero output projection makes the untrained model predict 0 (adaLN-zero style).
        nn.init.zeros_(self.unembed.proj.weight)

    def num_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())


def build_model(
    cfg: ModelConfig | str, *, device: torch.device | str | None = None, init: bool = True
) -> VideoDiT:
    """Assemble a VideoDiT from a config (or a preset name); ``device="meta"`` allocates nothing."""
    # NOTE: the model keeps its own copy, so set_attention on one model never changes another's config.
    cfg = model_config(cfg) if isinstance(cfg, str) else copy.deepcopy(cfg)
    cfg.validate()
    dim = cfg.dim
    with torch.device(device) if device is not None else contextlib.nullcontext():
        embed = Embedder(
            patch=nn.Conv3d(cfg.in_channels, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size),
            time_embed=MLP(cfg.freq_dim, dim, dim, act=nn.SiLU()),
            time_proj=nn.Linear(dim, 6 * dim),
            text_embed=MLP(cfg.text_dim, dim, dim, act=nn.GELU(approximate="tanh")),
            freq_dim=cfg.freq_dim,
            rope_dims=cfg.rope_dims(),
            rope_theta=cfg.rope_theta,
            abs_pos_embed=cfg.abs_pos_embed,
            token_order=cfg.attention.resolved_token_order(),
            tile=cfg.attention.tile,
        )
        blocks = [
            build_block(
                dim=dim,
                num_heads=cfg.num_heads,
                ffn_dim=cfg.ffn_dim,
                eps=cfg.eps,
                cross_attn_norm=cfg.cross_attn_norm,
                layer_index=i,
                attention_cfg=cfg.attention,
            )
            for i in range(cfg.num_layers)
        ]
        unembed = OutputHead(dim=dim, out_channels=cfg.out_channels, patch_size=cfg.patch_size, eps=cfg.eps)
        model = VideoDiT(embed=embed, blocks=blocks, unembed=unembed, config=cfg)
    if init and str(device) != "meta":
        model.init_weights()
    return model


def videodit_tiny(*, device: torch.device | str | None = None, **overrides: Any) -> VideoDiT:
    """A tiny VideoDiT for tests (dim 32, 2 layers)."""
    return build_model(videodit_tiny_config(**overrides), device=device)


def videodit_demo(*, device: torch.device | str | None = None, **overrides: Any) -> VideoDiT:
    """The CPU demo model (dim 128, 4 layers, MiniLM text_dim 384)."""
    return build_model(videodit_demo_config(**overrides), device=device)


def videodit_wan21_1_3b(*, device: torch.device | str | None = None, **overrides: Any) -> VideoDiT:
    """Wan2.1 T2V 1.3B architecture; pass ``device="meta"`` to build without allocating."""
    return build_model(videodit_wan21_1_3b_config(**overrides), device=device)


def videodit_wan21_14b(*, device: torch.device | str | None = None, **overrides: Any) -> VideoDiT:
    """Wan2.1 T2V 14B architecture; pass ``device="meta"`` to build without allocating."""
    return build_model(videodit_wan21_14b_config(**overrides), device=device)
