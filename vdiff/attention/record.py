"""Record a model's self-attention inputs (q, k, v per layer and head) while it runs.

:class:`ActivationRecorder` is a context manager over any model whose ``self_attentions()``
yield modules with an ``attn_op`` and a ``layer_index`` (the VideoDiT): on entry it wraps each
op so that every call stores a copy of its (B, H, N, D) q, k, v, then runs the op unchanged;
on exit it puts the ops back. What it keeps is capped: the heads named in ``heads``, at most
``max_calls`` calls per layer, and at most ``max_bytes`` in all (later calls are counted in
``dropped``, not stored). ``tag`` (a dict set by the caller, e.g. the seed and noise level of
the current denoising step) is copied into each record, so recordings can be split into
calibration and held-out sets by what produced them.

Record with the dense backend (the reference run): under a sampling policy that switches
backends the pipeline replaces the ops each step, and those steps are not recorded.

:func:`save_recordings` / :func:`load_recordings` write and read plain tensors and numbers
(``torch.load(weights_only=True)``: nothing in the file is executed).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT = "vdiff.attention_activations"


@dataclass
class Recording:
    """One self-attention call: its layer, the call's index in that layer, the caller's tag, q, k, v."""

    layer: int
    call: int
    tag: dict[str, Any]
    q: torch.Tensor
    """(B, H, N, D) as the backend received it (token order included)"""
    k: torch.Tensor
    v: torch.Tensor


@dataclass
class ActivationRecorder:
    """Wraps every self-attention op of ``model`` and stores q, k, v of its calls (capped)."""

    model: Any
    heads: Sequence[int] | None = None
    """heads to keep (all when None)"""
    max_calls: int = 1_000_000
    """calls stored per layer; later ones are counted in ``dropped``"""
    max_bytes: int = 1 << 30
    """bytes stored in all; a call that would pass it is counted in ``dropped``"""
    dtype: torch.dtype = torch.float32
    """dtype the copies are stored in (on the CPU)"""
    tag: dict[str, Any] = field(default_factory=dict)
    """copied into every record made while it is set (the caller updates it, e.g. per step)"""
    records: list[Recording] = field(default_factory=list)
    dropped: int = 0
    stored_bytes: int = 0
    _calls: dict[int, int] = field(default_factory=dict)
    _saved: list[tuple[Any, Any]] = field(default_factory=list)

    def __enter__(self) -> ActivationRecorder:
        if self._saved:
            raise RuntimeError("ActivationRecorder is already recording; use one `with` at a time")
        for m in self.model.self_attentions():
            self._saved.append((m, m.attn_op))
            m.attn_op = self._wrap(m.attn_op, int(m.layer_index))
        return self

    def __exit__(self, *exc: object) -> None:
        for m, op in self._saved:
            m.attn_op = op
        self._saved.clear()

    def _wrap(self, op: Callable[..., torch.Tensor], layer: int) -> Callable[..., torch.Tensor]:
        def recording_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> torch.Tensor:
            self.store(layer, q, k, v)
            return op(q, k, v, **kw)

        return recording_op

    def store(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep a copy of one call's (B, H, N, D) q, k, v, within the caps."""
        call = self._calls.get(layer, 0)
        self._calls[layer] = call + 1
        xs = [x.detach() for x in (q, k, v)]
        if self.heads is not None:
            idx = torch.tensor(list(self.heads), device=q.device)
            xs = [x.index_select(1, idx) for x in xs]
        size = sum(x.numel() for x in xs) * torch.finfo(self.dtype).bits // 8
        if call >= self.max_calls or self.stored_bytes + size > self.max_bytes:
            self.dropped += 1
            return
        q_, k_, v_ = (x.to("cpu", self.dtype).clone() for x in xs)
        self.records.append(Recording(layer, call, dict(self.tag), q_, k_, v_))
        self.stored_bytes += size


def save_recordings(
    records: Sequence[Recording], path: str | Path, *, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``records`` (and a ``meta`` dict of plain values) to ``path``; return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "meta": dict(meta or {}),
        "records": [
            {"layer": r.layer, "call": r.call, "tag": dict(r.tag), "q": r.q, "k": r.k, "v": r.v}
            for r in records
        ],
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_recordings(path: str | Path) -> tuple[list[Recording], dict[str, Any]]:
    """Read a file of :func:`save_recordings`: (records, meta). Tensors and plain values only."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:  # refused or truncated
        raise ValueError(f"{path}: not a readable activations file ({e}); regenerate it") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file; regenerate it with bench/attention_activations.py")
    records = [
        Recording(r["layer"], r["call"], dict(r["tag"]), r["q"], r["k"], r["v"]) for r in payload["records"]
    ]
    return records, dict(payload["meta"])
