"""The tiled PyTorch execution path: explicit scores over exactly the block mask.

Rows (one per Q block) are sorted by how many K blocks they keep and processed in chunks of
similar rows, gathering the kept K and V blocks into dense tensors (padded to the chunk's
largest count, padding masked with -inf), so skipped blocks cost no FLOPs and there is no
Python loop per block. Per chunk: the scores (INT8 by ``torch._int_mm`` for quantised Q and K,
else fp32), the softmax, the λ skip of P·V, the log-sum-exp, then P·V in the requested precision.
"""

from __future__ import annotations

import math

import torch

from vdiff.attention.layout import block_chunks, to_blocks
from vdiff.attention.quant import PV_TORCH_DTYPES, int8_matmul, prepare_v, pv_batched


def tiled_block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float,
    q_block: int,
    k_block: int,
    int8: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    lam: torch.Tensor | None = None,
    pv_dtype: str = "fp32",
    need_lse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax attention of q (B, H, Nq, D) over the K blocks ``mask`` (B, H, nqb, nkb) keeps.

    ``int8``: (q_int8, q scales, k_int8, k scales) from
    :func:`vdiff.attention.quant.smooth_and_quantize` (the scale is folded into them), else Q·Kᵀ
    runs in fp32 on q and k. ``lam``: per-head (H,) λ of the P·V skip, or None. Returns out
    (B, H, Nq, D) in q's dtype and the log-sum-exp (B, H, Nq) fp32 of the kept scores as
    computed (None unless ``need_lse``). Differentiable without ``int8``.
    """
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    nq, nk = math.ceil(n_q / q_block), math.ceil(n_k / k_block)
    rows_mask = mask.reshape(b * h * nq, nk)
    quantize = int8 is not None
    if int8 is not None:
        qi, q_scale, ki, k_scale = int8
        q_rows = to_blocks(qi, block=q_block)  # (B*H, nq, bq, D) int8
        k_rows = to_blocks(ki, block=k_block)  # (B*H, nk, bk, D) int8
        q_scale, k_scale = q_scale.reshape(b * h * nq), k_scale.reshape(b * h, nk)
    else:
        q_rows = to_blocks(q.float() * scale, block=q_block)  # (B*H, nq, bq, D) fp32
        k_rows = to_blocks(k.float(), block=k_block)  # (B*H, nk, bk, D) fp32
    v_rows, v_scale = prepare_v(to_blocks(v, block=k_block), pv_dtype=pv_dtype)  # (B*H, nk, bk, D)
    # NOTE: padded key positions of the last K block get -inf before the softmax.
    key_bias = torch.zeros(nk * k_block, device=q.device)
    key_bias[n_k:] = float("-inf")
    key_bias = key_bias.view(nk, k_block)
    order, chunks = block_chunks(rows_mask, rows_per_head=nq, elems_per_block=q_block * k_block)
    outs, lses = [], []
    ws = _Workspace(enabled=not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))))
    for ch in chunks:
        sel, c, bh, cols, valid, flat = ch.rows, ch.width, ch.heads, ch.cols, ch.valid, ch.flat
        g = sel.numel()
        shape = (g, q_block, c * k_block)
        if quantize:
            s_int = _int8_scores(q_rows, k_rows, sel=sel, flat=flat, c=c, ws=ws)  # (G, bq, c*bk) int32
            blk_scale = k_scale.view(-1).index_select(0, flat).view(g, 1, c, 1)
            blk_scale = blk_scale * q_scale.index_select(0, sel).view(g, 1, 1, 1)  # (G, 1, c, 1)
            # NOTE: convert, then scale in place: an int32 x fp32 broadcast multiply runs torch's
            # non-vectorised casting loop (~5x slower here).
            s = ws.take("s", shape, torch.float32, q.device).copy_(s_int)
            s.view(g, q_block, c, k_block).mul_(blk_scale)
        else:
            q_sel = q_rows.reshape(-1, q_block, d).index_select(0, sel)  # (G, bq, D)
            k_sel = k_rows.reshape(-1, k_block, d).index_select(0, flat).view(g, c * k_block, d)
            if ws.enabled:
                s = torch.bmm(q_sel, k_sel.transpose(1, 2), out=ws.take("s", shape, torch.float32, q.device))
            else:
                s = torch.bmm(q_sel, k_sel.transpose(1, 2))  # (G, bq, c*bk)
        bias = key_bias.index_select(0, cols.reshape(-1)).view(g, c, k_block)
        bias = bias.masked_fill(~valid[..., None], float("-inf"))
        if bool(torch.isinf(bias).any()):
            s = s.add_(bias.view(g, 1, c * k_block)) if ws.enabled else s + bias.view(g, 1, c * k_block)
        if ws.enabled:
            p = torch.softmax(s, dim=-1, out=ws.take("p", shape, torch.float32, q.device))
        else:
            p = torch.softmax(s, dim=-1)  # (G, bq, c*bk)
        v_flat = flat
        if lam is not None:
            rows_real = n_q - torch.remainder(sel, nq)[:, None] * q_block  # (G, 1): real rows of each Q block
            row_ok = torch.arange(q_block, device=q.device) < rows_real  # (G, bq)
            p, v_flat = _skip_pv_blocks(
                s, p, flat, valid, row_ok, lam=lam.index_select(0, bh % h), k_block=k_block
            )
        v_sel = v_rows.reshape(-1, k_block, d).index_select(0, v_flat).view(g, -1, d)  # (G, c', D)
        p_buf = None
        if ws.enabled and pv_dtype in ("bf16", "fp16"):
            p_buf = ws.take("p_half", tuple(p.shape), PV_TORCH_DTYPES[pv_dtype], q.device)
        v_sc = None if v_scale is None else v_scale[bh]
        outs.append(pv_batched(p, v_sel, pv_dtype=pv_dtype, v_scale=v_sc, p_buf=p_buf))
        if need_lse:
            lses.append(torch.logsumexp(s, dim=-1))  # (G, bq)
    inv = order.argsort()  # (R,): sorted position of each row
    out = torch.cat(outs).index_select(0, inv).view(b, h, nq * q_block, d)[:, :, :n_q].to(q.dtype)
    if not need_lse:
        return out, None
    lse = torch.cat(lses).index_select(0, inv).view(b, h, nq * q_block)[:, :, :n_q]
    return out, lse


class _Workspace:
    """Flat buffers reused by every chunk of one tiled call (None of them when autograd records).

    Fresh (G, bq, c*bk) tensors of a few MB per chunk cost more in first-touch page faults than
    the arithmetic on them (profiled at N = 16384, D = 64: ~8.8 GB of faults in one `sage` call).
    """

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bufs: dict[str, torch.Tensor] = {}

    def take(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """A tensor of ``shape`` (uninitialised): a view of buffer ``name`` when enabled."""
        if not self.enabled:
            return torch.empty(shape, dtype=dtype, device=device)
        n = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self._bufs[name] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)


def _int8_scores(
    q_rows: torch.Tensor,
    k_rows: torch.Tensor,
    *,
    sel: torch.Tensor,
    flat: torch.Tensor,
    c: int,
    ws: _Workspace,
) -> torch.Tensor:
    """INT32 Q·Kᵀ of the chunk's rows: (G, bq, c*bk); one ``torch._int_mm`` per row (it is 2-D only)."""
    bq, d = q_rows.shape[2], q_rows.shape[3]
    bk = k_rows.shape[2]
    g = sel.numel()
    q_sel = q_rows.reshape(-1, bq, d).index_select(0, sel)  # (G, bq, D) int8
    k_sel = k_rows.reshape(-1, bk, d).index_select(0, flat).view(g, c * bk, d)  # (G, c*bk, D) int8
    out = ws.take("s_int32", (g, bq, c * bk), torch.int32, q_rows.device)
    for r in range(g):
        if q_rows.device.type == "cpu":
            torch._int_mm(q_sel[r], k_sel[r].t(), out=out[r])  # no int32 copy
        else:
            out[r] = int8_matmul(q_sel[r], k_sel[r].t())
    return out


def _skip_pv_blocks(
    s: torch.Tensor,
    p: torch.Tensor,
    flat: torch.Tensor,
    valid: torch.Tensor,
    row_ok: torch.Tensor,
    *,
    lam: torch.Tensor,
    k_block: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop from P·V the K blocks whose largest score is below every real row's maximum by more than |λ|.

    s, p (G, bq, c*bk); flat (G*c,) K-block indices; valid (G, c); row_ok (G, bq), False for the
    zero padding after the last query (it must not keep blocks alive); lam (G,). Returns the
    compacted P (G, bq, c'*bk) and its K-block indices (G*c',); the softmax normaliser still
    counts the dropped blocks, as in SpargeAttn.
    """
    g, bq, _ = s.shape
    c = valid.shape[1]
    with torch.no_grad():
        block_max = s.view(g, bq, c, k_block).amax(dim=-1)  # (G, bq, c)
        gap = block_max - block_max.amax(dim=-1, keepdim=True)  # (G, bq, c)
        gap = gap.masked_fill(~row_ok[..., None], float("-inf")).amax(dim=1)  # (G, c)
        keep = (gap >= lam[:, None]) & valid
    if bool((keep == valid).all()):
        return p, flat
    c2 = max(1, int(keep.sum(dim=-1).max()))
    pick = keep.to(torch.int8).argsort(dim=-1, descending=True, stable=True)[:, :c2]  # (G, c2)
    kept = keep.gather(1, pick)  # (G, c2)
    p4 = p.view(g, bq, c, k_block).gather(2, pick[:, None, :, None].expand(g, bq, c2, k_block))
    p4 = p4 * kept[:, None, :, None]
    return p4.reshape(g, bq, c2 * k_block), flat.view(g, c).gather(1, pick).view(-1)
