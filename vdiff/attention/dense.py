"""``sdpa``: torch's scaled_dot_product_attention, the default backend and the reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vdiff.attention.registry import register_backend


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
