"""The per-layer, per-head thresholds file of the block-sparse backends (docs/attention.md,
"Calibration file"): written by :mod:`vdiff.attention.calibrate`, read by ``sparse`` and
``sparse_sage`` (option ``thresholds_file`` or ``thresholds``)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

THRESHOLDS_FORMAT = "vdiff.sparse_attention_thresholds"
THRESHOLDS_FILENAME = "sparse_attention.json"


@dataclass
class LayerThresholds:
    """Calibrated thresholds of one layer, one entry per (global) head."""

    cdf_threshold: list[float]
    """per-head pooled-softmax mass the kept K blocks must reach"""
    pv_threshold: list[float] | None = None
    """per-head λ of the P·V skip (None: no skip)"""
    rel_l1: list[float] | None = None
    """per-head relative L1 against dense attention measured at calibration"""


@dataclass
class SparseThresholds:
    """Per-layer, per-head thresholds and the settings they were calibrated under."""

    backend: str
    """backend calibrated: sparse or sparse_sage"""
    l1_budget: float
    """relative-L1 budget each head was held to"""
    q_block: int
    """Q block size used at calibration (must match at run time)"""
    k_block: int
    """K block size used at calibration (must match at run time)"""
    sim_threshold: float
    """self-similarity threshold used at calibration"""
    layers: dict[int, LayerThresholds]
    """layer index -> thresholds"""

    def to_json(self) -> dict:
        """The JSON document (see docs/attention.md, "Calibration file")."""
        return {
            "format": THRESHOLDS_FORMAT,
            "version": 1,
            "backend": self.backend,
            "l1_budget": self.l1_budget,
            "q_block": self.q_block,
            "k_block": self.k_block,
            "sim_threshold": self.sim_threshold,
            "layers": {
                str(i): {"cdf_threshold": t.cdf_threshold, "pv_threshold": t.pv_threshold, "rel_l1": t.rel_l1}
                for i, t in sorted(self.layers.items())
            },
        }

    @classmethod
    def from_json(cls, doc: dict, *, source: str = "<dict>") -> SparseThresholds:
        """Parse :meth:`to_json`'s document; a wrong format is an error naming ``source``."""
        if doc.get("format") != THRESHOLDS_FORMAT or doc.get("version") != 1:
            raise ValueError(
                f"{source} is not a vdiff sparse-attention thresholds file (format "
                f"{doc.get('format')!r} version {doc.get('version')!r}); recalibrate with "
                "vdiff.attention.calibrate"
            )
        layers = {
            int(i): LayerThresholds(
                cdf_threshold=[float(x) for x in t["cdf_threshold"]],
                pv_threshold=None if t.get("pv_threshold") is None else [float(x) for x in t["pv_threshold"]],
                rel_l1=t.get("rel_l1"),
            )
            for i, t in doc["layers"].items()
        }
        return cls(
            backend=doc["backend"],
            l1_budget=float(doc["l1_budget"]),
            q_block=int(doc["q_block"]),
            k_block=int(doc["k_block"]),
            sim_threshold=float(doc["sim_threshold"]),
            layers=layers,
        )

    def save(self, path: str | Path) -> Path:
        """Write the JSON file atomically; a directory gets ``sparse_attention.json`` inside it."""
        from vdiff.io.files import atomic_write_json

        path = Path(path)
        if path.is_dir():
            path = path / THRESHOLDS_FILENAME
        atomic_write_json(path, self.to_json())
        return path

    def for_layer(
        self, layer_index: int, *, heads: int, head_offset: int = 0, num_heads: int | None = None
    ) -> LayerThresholds:
        """Thresholds of ``heads`` local heads starting at global head ``head_offset``.

        ``num_heads``: the layer's head count (Ulysses passes it with ``head_offset``); the file
        must hold exactly that many. Without it, ``head_offset=0`` means the call sees every head.
        """
        if layer_index not in self.layers:
            raise ValueError(
                f"sparse-attention thresholds have no entry for layer {layer_index} (calibrated layers: "
                f"{sorted(self.layers)}); recalibrate for this model"
            )
        t = self.layers[layer_index]
        total = num_heads if num_heads is not None else (heads if head_offset == 0 else None)
        if total is not None and len(t.cdf_threshold) != total:
            raise ValueError(
                f"layer {layer_index} was calibrated for {len(t.cdf_threshold)} heads, but this attention "
                f"has {total}; the thresholds file belongs to another model: recalibrate for this one"
            )
        lo, hi = head_offset, head_offset + heads
        if hi > len(t.cdf_threshold):
            raise ValueError(
                f"layer {layer_index} was calibrated for {len(t.cdf_threshold)} heads; heads "
                f"{lo}..{hi - 1} requested (check head_offset under Ulysses)"
            )
        return LayerThresholds(
            cdf_threshold=t.cdf_threshold[lo:hi],
            pv_threshold=None if t.pv_threshold is None else t.pv_threshold[lo:hi],
            rel_l1=None if t.rel_l1 is None else t.rel_l1[lo:hi],
        )


def load_thresholds(path: str | Path) -> SparseThresholds:
    """Read a thresholds file (or ``sparse_attention.json`` inside a checkpoint folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / THRESHOLDS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"sparse-attention thresholds file {path} not found; run vdiff.attention.calibrate "
            "or use topk= / cdf_threshold= without a file"
        )
    stat = path.stat()
    return _load_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> SparseThresholds:
    with open(path) as f:
        return SparseThresholds.from_json(json.load(f), source=path)
