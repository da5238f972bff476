"""Which backend each layer calls: :class:`AttentionConfig` and the per-layer op it builds."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vdiff.attention.registry import attention, get_backend
from vdiff.attention.token_order import SPARSE_BACKENDS, TOKEN_ORDERS


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

    A ``functools.partial`` of :func:`~vdiff.attention.attention` (what :func:`attention_op`
    builds) takes what its backend takes; any other callable, what its signature names.
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
