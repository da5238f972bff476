"""The backend registry and the one :func:`attention` function that dispatches to it.

Backends register themselves with the constraints they need (devices, dtypes, head dims,
gradients, LSE); a call that violates them is a clear error naming the backend and what it
supports. The built-in backends (``sdpa``, ``sage``, ``sparse``, ``sparse_sage``) live in their
own modules, which the package imports, so importing anything from :mod:`vdiff.attention`
registers them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

AttentionFn = Callable[..., "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


@dataclass(frozen=True)
class Backend:
    """A registered attention implementation and the inputs it accepts."""

    name: str
    fn: AttentionFn
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    head_dims: tuple[int, ...] | None
    supports_grad: bool
    supports_lse: bool
    doc: str = ""


_REGISTRY: dict[str, Backend] = {}


def register_backend(
    name: str,
    *,
    devices: tuple[str, ...] = ("cpu", "cuda"),
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16),
    head_dims: tuple[int, ...] | None = None,
    supports_grad: bool = True,
    supports_lse: bool = False,
) -> Callable[[AttentionFn], AttentionFn]:
    """Decorator: register ``fn(q, k, v, *, scale, return_lse, **options)`` under ``name``."""

    def deco(fn: AttentionFn) -> AttentionFn:
        _REGISTRY[name] = Backend(
            name=name,
            fn=fn,
            devices=devices,
            dtypes=dtypes,
            head_dims=head_dims,
            supports_grad=supports_grad,
            supports_lse=supports_lse,
            doc=(fn.__doc__ or "").strip().split("\n")[0],
        )
        return fn

    return deco


def available_backends() -> dict[str, Backend]:
    """Registered backends by name."""
    return dict(_REGISTRY)


def get_backend(name: str) -> Backend:
    """Look up a backend; unknown names are an error listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention backend {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def _check(b: Backend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_lse: bool) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects (B, H, N, D) tensors; got {tuple(q.shape)}, {tuple(k.shape)}")
    if q.device.type not in b.devices:
        raise ValueError(f"attention backend {b.name!r} runs on {b.devices}, not {q.device.type}")
    if q.dtype not in b.dtypes:
        raise ValueError(f"attention backend {b.name!r} supports dtypes {b.dtypes}, not {q.dtype}")
    if b.head_dims is not None and q.shape[-1] not in b.head_dims:
        raise ValueError(
            f"attention backend {b.name!r} supports head dims {b.head_dims}, not {q.shape[-1]}; use 'sdpa'"
        )
    if return_lse and not b.supports_lse:
        raise ValueError(f"attention backend {b.name!r} cannot return the log-sum-exp (needed by ring)")
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)) and not b.supports_grad:
        raise ValueError(f"attention backend {b.name!r} is inference-only; use 'sdpa' for training")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: str = "sdpa",
    scale: float | None = None,
    return_lse: bool = False,
    **options: object,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention over (B, H, N, D) tensors with the named backend; see :mod:`vdiff.attention`."""
    b = get_backend(backend)
    _check(b, q, k, v, return_lse)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return b.fn(q, k, v, scale=scale, return_lse=return_lse, **options)
