"""One attention function and a registry of backends (diffusers-style dispatch).

``attention(q, k, v, backend="sdpa", **options)`` takes (B, H, N, D) tensors and returns
(B, H, N, D), or ``(out, lse)`` with the log-sum-exp (B, H, N) in fp32 when
``return_lse=True`` (ring attention merges partial results with it). Backends register
themselves with the constraints they need (devices, dtypes, head dims, gradients, LSE);
a call that violates them is a clear error naming the backend and what it supports.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from vdiff.attention.token_order import SPARSE_BACKENDS, TOKEN_ORDERS

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
    _load_builtin_backends()
    return dict(_REGISTRY)


def get_backend(name: str) -> Backend:
    """Look up a backend; unknown names are an error listing the known ones."""
    _load_builtin_backends()
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
    """Attention over (B, H, N, D) tensors with the named backend; see the module docstring."""
    b = get_backend(backend)
    _check(b, q, k, v, return_lse)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return b.fn(q, k, v, scale=scale, return_lse=return_lse, **options)


@register_backend("sdpa", supports_lse=True)
def sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, return_lse: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """torch's scaled_dot_product_attention: the default and the reference."""
    if not return_lse:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    # NOTE: SDPA does not expose the LSE publicly; compute both explicitly in fp32 so autograd
    # flows through out and lse alike (ring attention's backward needs both).
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    lse = torch.logsumexp(s, dim=-1)  # (B, H, Nq)
    p = torch.exp(s - lse.unsqueeze(-1))
    out = torch.matmul(p, v.float()).to(q.dtype)  # (B, H, Nq, D)
    return out, lse


@dataclass
class AttentionConfig:
    """Which backend each self-attention layer of a model calls."""

    backend: str = "sdpa"
    """self-attention backend for every layer (see ``available_backends()``)"""
    per_layer: dict[int, str] = field(default_factory=dict)
    """per-layer backend overrides, layer index -> backend name, e.g. {0: sdpa}"""
    options: dict[str, Any] = field(default_factory=dict)
    """extra keyword options (e.g. sparsity settings), passed to each layer's backend if it takes them"""
    token_order: str = "auto"
    """token order inside the model: raster, tiles, or auto (tiles when a layer uses sparse or sparse_sage)"""
    tile: int = 8
    """side, in tokens, of the square spatial tiles of token_order=tiles"""

    def backend_for(self, layer_index: int) -> str:
        """The backend name that layer ``layer_index`` uses."""
        return self.per_layer.get(layer_index, self.backend)

    def resolved_token_order(self, *, also: tuple[str, ...] = ()) -> str:
        """``"raster"`` or ``"tiles"``: ``token_order`` with ``auto`` resolved.

        ``auto`` is ``tiles`` when ``backend``, a ``per_layer`` value or one of ``also`` (e.g. a
        sampling policy's backend) is a block-sparse backend, else ``raster``.
        """
        if self.token_order != "auto":
            return self.token_order
        names = {self.backend, *self.per_layer.values(), *also}
        return "tiles" if names & set(SPARSE_BACKENDS) else "raster"

    def validate(self) -> None:
        """Raise if a backend name, an option, ``token_order`` or ``tile`` is wrong (naming the key)."""
        for name in {self.backend, *self.per_layer.values()}:
            get_backend(name)
        bad = [i for i in self.per_layer if not isinstance(i, int) or i < 0]
        if bad:
            raise ValueError(f"attention.per_layer: layer indices must be integers >= 0, got {bad}")
        if self.token_order not in TOKEN_ORDERS:
            raise ValueError(
                f"attention.token_order must be one of {', '.join(TOKEN_ORDERS)}, got {self.token_order!r}"
            )
        if isinstance(self.tile, bool) or not isinstance(self.tile, int) or self.tile < 1:
            raise ValueError(
                f"attention.tile must be an integer >= 1 (tokens per tile side); got {self.tile!r}"
            )
        if "grid" in self.options and self.resolved_token_order() == "tiles":
            # NOTE: the backends' grid option assumes raster tokens; on tile-ordered ones it
            # would reorder them a second time.
            raise ValueError(
                "attention.options.grid reorders raster tokens, but attention.token_order resolves to "
                "tiles, so the model already runs in tile order; drop options.grid, or set token_order=raster"
            )
        names = sorted({self.backend, *self.per_layer.values()})
        for key in self.options:
            if not any(_takes_option(name, key) for name in names):
                raise ValueError(
                    f"attention.options: no backend in use ({', '.join(names)}) takes the option {key!r}; "
                    "check its spelling, or pick a backend that has it"
                )


def _accepts(fn: Callable[..., Any], key: str) -> bool:
    """Whether ``fn`` accepts the keyword ``key`` (any key for a ``**kwargs`` one)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return key in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _takes_option(backend: str, key: str) -> bool:
    """Whether ``backend``'s function accepts the keyword ``key``."""
    return _accepts(get_backend(backend).fn, key)


def op_takes(op: Callable[..., Any], key: str) -> bool:
    """Whether the attention op ``op`` accepts the keyword ``key`` at call time.

    A ``functools.partial`` of :func:`attention` (what :func:`attention_op` builds) takes what its
    backend takes; any other callable, what its signature names.
    """
    if isinstance(op, functools.partial) and op.func is attention:
        return _takes_option(str(op.keywords.get("backend", "sdpa")), key)
    return _accepts(op, key)


def attention_op(cfg: AttentionConfig, *, layer_index: int) -> Callable[..., Any]:
    """The ``(q, k, v) -> out`` callable that layer ``layer_index`` uses under ``cfg``.

    Backends whose function takes a ``layer_index`` keyword (per-layer calibrated ones, such as
    ``sparse``) receive it, unless ``cfg.options`` sets it. Each layer gets only the options its
    backend takes, so ``per_layer={0: sdpa}`` works beside sparsity options for the other layers
    (:meth:`AttentionConfig.validate` rejects an option that no backend in use takes).
    """
    name = cfg.backend_for(layer_index)
    options = {k: v for k, v in cfg.options.items() if _takes_option(name, k)}
    if "layer_index" in inspect.signature(get_backend(name).fn).parameters:
        options.setdefault("layer_index", layer_index)
    return functools.partial(attention, backend=name, **options)


_BUILTINS_LOADED = False


def _load_builtin_backends() -> None:
    """Import the modules that register the optional backends (sage, sparse, ...)."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    import importlib

    for mod in ("vdiff.attention.sage", "vdiff.attention.sparse"):
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)
