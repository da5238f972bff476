"""Sequence parallelism applied to a VideoDiT from outside: Ulysses, ring, or a 2D grid of both.

``apply_sequence_parallel(model, ...)`` changes no model code and no parameter name:

* a forward hook on ``model.embed`` pads the video tokens to a multiple of the sequence-parallel
  degree S and keeps this rank's 1/S of them and of the per-token RoPE table; the text context,
  time embedding and modulation stay replicated;
* each self-attention's ``attn_op`` becomes a :class:`SequenceParallelAttention` that attends the
  local queries to the keys of the whole sequence (Ulysses all-to-all, ring passes, or both);
* a forward pre-hook on ``model.unembed`` all-gathers the tokens (gradients summed back, see
  :mod:`vdiff.parallel.collectives`) and drops the padding, so the output, and therefore the
  loss, equals the single-device one on every rank of the group.

Token order: rank ``ring_rank * U + ulysses_rank`` holds the tokens' chunk of that index, so
after the Ulysses all-to-all ring rank j holds the contiguous block j of the sequence.
Padding keys are cut off (Ulysses) or skipped by their valid length (ring), so a length that S
does not divide gives exactly the unpadded result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from vdiff.attention import get_backend, op_takes
from vdiff.parallel.collectives import gather_sequence, heads_to_seq
from vdiff.parallel.ring import ring_attention
from vdiff.parallel.ulysses import AttentionOp, check_heads, ulysses_scatter_qkv


def _size(group: dist.ProcessGroup | None) -> int:
    return 1 if group is None else dist.get_world_size(group)


def _rank(group: dist.ProcessGroup | None) -> int:
    return 0 if group is None else dist.get_rank(group)


@dataclass
class SequenceLayout:
    """The sequence-parallel process groups, and the true token count of the current forward."""

    ulysses_group: dist.ProcessGroup | None
    """group of the Ulysses all-to-all (None: degree 1)"""
    ring_group: dist.ProcessGroup | None
    """group of the ring passes (None: degree 1)"""
    sp_group: dist.ProcessGroup | None
    """all ranks sharing one sample's tokens, ordered ring-major then Ulysses"""
    valid_len: int = 0
    """tokens before padding; set by the embed hook at every forward"""

    @property
    def ulysses(self) -> int:
        return _size(self.ulysses_group)

    @property
    def ring(self) -> int:
        return _size(self.ring_group)

    @property
    def degree(self) -> int:
        return self.ulysses * self.ring

    def check(self) -> None:
        """The sequence-parallel group must be the ring x Ulysses grid in ring-major order."""
        if _size(self.sp_group) != self.degree:
            raise ValueError(
                f"sequence-parallel group has {_size(self.sp_group)} ranks, expected ring x ulysses = "
                f"{self.ring} x {self.ulysses}"
            )
        expected = _rank(self.ring_group) * self.ulysses + _rank(self.ulysses_group)
        if _rank(self.sp_group) != expected:
            raise ValueError(
                f"sequence-parallel rank {_rank(self.sp_group)} should be ring rank x ulysses + ulysses "
                f"rank = {expected}; build the groups with vdiff.parallel.build_mesh (ulysses innermost)"
            )

    def padded_len(self, n: int) -> int:
        """``n`` rounded up to a multiple of the sequence-parallel degree."""
        return -(-n // self.degree) * self.degree

    def shard(self, x: torch.Tensor, *, dim: int) -> torch.Tensor:
        """Zero-pad ``x`` along ``dim`` to a multiple of the degree and return this rank's chunk."""
        n = x.shape[dim]
        pad = self.padded_len(n) - n
        if pad:
            widths = [0, 0] * (x.ndim - 1 - dim % x.ndim) + [0, pad]
            x = F.pad(x, widths)
        return x.chunk(self.degree, dim=dim)[_rank(self.sp_group)]

    def gather(self, x: torch.Tensor, *, dim: int) -> torch.Tensor:
        """All-gather the chunks along ``dim`` (gradients summed back) and drop the padding."""
        full = gather_sequence(x, self.sp_group, dim=dim) if self.sp_group is not None else x
        return full.narrow(dim, 0, self.valid_len)


class SequenceParallelAttention:
    """A self-attention ``attn_op`` for sequence-sharded q/k/v (B, H, Ls, D) -> (B, H, Ls, D).

    Ulysses (if its degree > 1) turns the local tokens into local heads of the ring block; ring
    attention (if its degree > 1) then attends to every ring rank's block, else ``inner`` (the
    layer's own op) attends to the whole gathered sequence. Padding keys never take part.
    Under Ulysses, an ``inner`` that takes ``head_offset`` / ``num_heads`` (per-head calibrated
    sparse backends, the threshold calibrator) is told which of the layer's heads it holds.
    """

    def __init__(self, *, inner: AttentionOp, layout: SequenceLayout, ring_backend: str = "sdpa") -> None:
        if not get_backend(ring_backend).supports_lse:
            raise ValueError(f"ring attention needs a backend returning the LSE; {ring_backend!r} does not")
        self.inner = inner
        self.layout = layout
        self.ring_backend = ring_backend
        self._head_keys = tuple(key for key in ("head_offset", "num_heads") if op_takes(inner, key))

    def _head_range(self, num_heads: int) -> dict[str, int]:
        """``head_offset`` / ``num_heads`` keywords for ``inner`` on this Ulysses rank."""
        lay = self.layout
        if lay.ulysses_group is None or not self._head_keys:
            return {}
        values = {
            "head_offset": _rank(lay.ulysses_group) * (num_heads // lay.ulysses),
            "num_heads": num_heads,
        }
        return {key: values[key] for key in self._head_keys}

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        heads = self._head_range(q.shape[1])
        if lay.ulysses_group is not None:
            q, k, v = ulysses_scatter_qkv(q, k, v, lay.ulysses_group)  # (B, H/U, L, D), L = U*Ls
        block = k.shape[2]  # keys of this ring block
        if lay.ring_group is not None:
            valid = tuple(min(max(lay.valid_len - j * block, 0), block) for j in range(lay.ring))
            out = ring_attention(q, k, v, group=lay.ring_group, valid_lens=valid, backend=self.ring_backend)
        else:
            n = min(lay.valid_len, block)
            out = (
                self.inner(q, k[:, :, :n], v[:, :, :n], **heads)
                if n < block
                else self.inner(q, k, v, **heads)
            )
        if lay.ulysses_group is not None:
            out = heads_to_seq(out, lay.ulysses_group)  # (B, H, Ls, D)
        return out


@dataclass
class SequenceParallelHandle:
    """What :func:`apply_sequence_parallel` changed; :meth:`remove` undoes it."""

    layout: SequenceLayout
    hooks: list[RemovableHandle]
    original_ops: list[tuple[nn.Module, Callable[..., Any]]]

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        for module, op in self.original_ops:
            module.attn_op = op  # type: ignore[assignment]
        self.hooks.clear()
        self.original_ops.clear()


def _ring_backend_for(model: nn.Module, layer_index: int) -> str:
    """The layer's configured backend if it can return the LSE, else the ``sdpa`` reference."""
    cfg = getattr(getattr(model, "config", None), "attention", None)
    name = cfg.backend_for(layer_index) if cfg is not None else "sdpa"
    # NOTE: ring merges per-block results by their log-sum-exp; backends that cannot return it
    # (e.g. inference-only quantised kernels) fall back to sdpa for the ring blocks.
    return name if get_backend(name).supports_lse else "sdpa"


def apply_sequence_parallel(model: nn.Module, layout: SequenceLayout) -> SequenceParallelHandle:
    """Shard ``model``'s video tokens over ``layout``'s groups (see the module docstring).

    ``model`` must expose the VideoDiT pieces: ``embed`` returning a NamedTuple with ``tokens``
    (B, N, dim) and ``rope`` (N, ...), ``self_attentions()`` with ``attn_op``/``num_heads``, and
    ``unembed(tokens, ...)``.
    """
    layout.check()
    if layout.degree == 1:
        return SequenceParallelHandle(layout, [], [])
    for name in ("embed", "unembed", "self_attentions"):
        if not hasattr(model, name):
            raise TypeError(f"sequence parallelism needs model.{name} (a VideoDiT); {type(model).__name__}")
    originals: list[tuple[nn.Module, Callable[..., Any]]] = []
    for attn in model.self_attentions():  # type: ignore[operator]
        check_heads(attn.num_heads, layout.ulysses)
        originals.append((attn, attn.attn_op))
        attn.attn_op = SequenceParallelAttention(
            inner=attn.attn_op, layout=layout, ring_backend=_ring_backend_for(model, attn.layer_index)
        )

    def shard_tokens(_module: nn.Module, _args: Any, out: Any) -> Any:
        # NOTE: valid_len is read by the attention ops of this forward (and by activation
        # checkpointing's recomputation, which repeats this forward's shapes).
        layout.valid_len = out.tokens.shape[1]
        return out._replace(tokens=layout.shard(out.tokens, dim=1), rope=layout.shard(out.rope, dim=0))

    def gather_tokens(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if "tokens" in kwargs:
            kwargs = {**kwargs, "tokens": layout.gather(kwargs["tokens"], dim=1)}
        else:
            args = (layout.gather(args[0], dim=1), *args[1:])
        return args, kwargs

    hooks = [
        model.embed.register_forward_hook(shard_tokens),  # type: ignore[union-attr]
        model.unembed.register_forward_pre_hook(gather_tokens, with_kwargs=True),  # type: ignore[union-attr]
    ]
    return SequenceParallelHandle(layout, hooks, originals)
