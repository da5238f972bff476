"""What produced a run's numbers, and how two runs differ in it.

Per dimension, ``eval_info.json`` records the formula (the metric's ``method`` string, its
``formula_version`` if it declares one, the VBench commit vdiff's formulas were read at, vdiff's
version) and a weights manifest: the sha256 of every file of every weight the metric loaded
(config key -> path -> files). :func:`provenance_warnings` lists what differs between two runs,
for ``vdiff eval --compare``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from eval.metric import Metric

_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file (remembered per path, size and mtime within the process)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        with path.open("rb") as f:
            _HASHES[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _HASHES[key]


def weights_manifest(used: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """``{config key: {"path": str, "sha256": {file: hex}}}``; a folder (a transformers model)
    lists each file under it by its relative path, a single file by its name."""
    out: dict[str, dict[str, Any]] = {}
    for key, path in sorted(used.items()):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            hashes = {p.relative_to(path).as_posix(): sha256_file(p) for p in files}
        else:
            hashes = {path.name: sha256_file(path)}
        out[key] = {"path": str(path), "sha256": hashes}
    return out


def formula_identity(metric: Metric) -> dict[str, Any]:
    """What fixes a dimension's formula: method string, optional formula version, VBench commit
    the formulas were read at, vdiff version."""
    import vdiff
    from eval import vbench

    return {
        "method": metric.method,
        "version": getattr(metric, "formula_version", None),
        "vbench_head": getattr(vbench, "VBENCH_HEAD", None),
        "vdiff": vdiff.__version__,
    }


def _weights_differences(name: str, wa: dict[str, Any], wb: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted({*wa, *wb}):
        if key not in wa or key not in wb:
            which = "A" if key in wa else "B"
            out.append(f"{name}: only run {which} used weights {key}")
            continue
        ha, hb = wa[key]["sha256"], wb[key]["sha256"]
        changed = sorted(f for f in {*ha, *hb} if ha.get(f) != hb.get(f))
        if changed:
            shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            out.append(
                f"{name}: different weights for {key} (sha256 differs: {shown}; "
                f"A {wa[key]['path']}, B {wb[key]['path']})"
            )
    return out


def provenance_warnings(dims_a: dict[str, Any], dims_b: dict[str, Any]) -> list[str]:
    """One line per difference in formulas or weights between two runs' ``dimensions`` records,
    for the dimensions both runs scored; also a line per dimension whose record predates the
    manifest (it cannot be checked)."""
    out: list[str] = []
    for name in [n for n in dims_a if n in dims_b]:
        a, b = dims_a[name], dims_b[name]
        fa, fb = a.get("formula"), b.get("formula")
        if fa is None or fb is None or "weights" not in a or "weights" not in b:
            which = "A" if fa is None or "weights" not in a else "B"
            out.append(f"{name}: run {which} records no formula/weights manifest (older vdiff); not checked")
            if a.get("method") != b.get("method"):
                out.append(f"{name}: different methods (A: {a.get('method')}; B: {b.get('method')})")
            continue
        for field, label in (
            ("method", "methods"),
            ("version", "formula versions"),
            ("vbench_head", "VBench commits"),
            ("vdiff", "vdiff versions"),
        ):
            if fa.get(field) != fb.get(field):
                out.append(f"{name}: different {label} (A: {fa.get(field)}; B: {fb.get(field)})")
        out += _weights_differences(name, a["weights"], b["weights"])
    return out
