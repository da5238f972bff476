"""Input checks shared by the attention backends: each error names the backend and the fix."""

from __future__ import annotations

import torch


def check_qkv(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise a clear error if q, k, v cannot be attended together (shapes, devices, dtypes)."""
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention backend {name!r}: q (B, H, Nq, D) and k, v (B, H, Nk, D) must agree on B, H "
            f"and D (and k, v on Nk); got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if v.shape[-1] != q.shape[-1]:
        raise ValueError(f"attention backend {name!r}: v head dim {v.shape[-1]} != q's {q.shape[-1]}")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"attention backend {name!r}: empty sequence: q {tuple(q.shape)} k {tuple(k.shape)}")
    if len({q.dtype, k.dtype, v.dtype}) != 1 or len({q.device, k.device, v.device}) != 1:
        raise ValueError(f"attention backend {name!r}: q, k, v must share one dtype and device")


def check_blocks(name: str, **blocks: int) -> None:
    """Raise if a block size option is not a positive integer."""
    for key, val in blocks.items():
        if not isinstance(val, int) or val <= 0:
            raise ValueError(f"attention backend {name!r}: option {key} must be an integer > 0, got {val!r}")


def per_head(value: float | torch.Tensor, *, heads: int, device: torch.device) -> torch.Tensor:
    """A scalar or (heads,) threshold as a (1, heads, 1, 1) fp32 tensor."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if t.ndim == 0:
        t = t.expand(heads)
    if t.shape != (heads,):
        raise ValueError(f"per-head threshold has shape {tuple(t.shape)}, expected ({heads},)")
    return t.view(1, heads, 1, 1)
