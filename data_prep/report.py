"""Run summary (printed) and ``report.html`` (counts, histograms, a frame strip per kept clip).

The HTML page is one self-contained file: the matplotlib histograms (Agg backend) and the
frame strips are embedded as base64 PNGs. It is rebuilt from ``report.json``,
``manifest.parquet`` and the shards alone, so ``vdiff curate --report DIR`` works on any
finished output folder.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.manifest import read_manifest
from data_prep.shards import sample_mp4_frames
from vdiff.io.files import atomic_write_text


def summary_text(report: dict[str, Any]) -> str:
    """A few lines for the terminal: inputs, clips per status, kept, shards, time."""
    n_in = len(report["inputs"])
    lines = [
        f"curate: {n_in} input(s), {report['errors']} error(s), {report['videos_reused']} reused from work/",
        f"  clips: {report['clips']} candidates, {report['kept']} kept in {len(report['shards'])} shard(s)",
    ]
    for status, n in sorted(report["counts"].items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"    {status:<12} {n}")
    for e in report["inputs"]:
        if e["status"] == "error":
            lines.append(f"  error: {e['reason']}")
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in report["stage_seconds"].items() if v > 0)
    lines.append(f"  time: {report['wall_seconds']:.1f}s wall; per stage (summed over workers): {stages}")
    return "\n".join(lines)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def histogram_png(values: Sequence[float], *, title: str, xlabel: str, bins: int = 30) -> str:
    """A histogram as a base64 PNG (matplotlib, Agg backend)."""
    # NOTE: a bare Figure renders with the Agg canvas and skips pyplot's backend machinery
    # (and its import time); nothing global is touched.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    if len(values):
        ax.hist(values, bins=bins, color="#4472c4")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("clips")
    return _png(fig)


def frame_strip(mp4: bytes, *, n: int = 4, height: int = 72) -> np.ndarray:
    """``n`` evenly spaced frames of an mp4, side by side at ``height`` pixels, (H, n*W, 3) uint8."""
    import cv2

    picked = sample_mp4_frames(mp4, n)  # (n, H, W, 3)
    h, w = picked.shape[1:3]
    size = (max(1, round(w * height / h)), height)
    return np.concatenate([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in picked], axis=1)


def _strip_png(strip: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _shard_clips(shard: Path, wanted: set[str]) -> dict[str, bytes]:
    out = {}
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            key = m.name.rsplit(".", 1)[0]
            if m.name.endswith(".mp4") and key in wanted:
                out[key] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return out


def render_html(out_dir: Path, *, max_strips: int = 200) -> Path:
    """Write ``out_dir/report.html`` from the run's outputs and return its path."""
    out_dir = Path(out_dir)
    report_path = out_dir / "report.json"
    if not report_path.is_file():
        raise FileNotFoundError(f"{report_path} not found: run `vdiff curate INPUT... --out {out_dir}` first")
    report = json.loads(report_path.read_text())
    rows = read_manifest(out_dir / "manifest.parquet")
    esc = html.escape

    motion = [r["motion"] for r in rows if r["motion"] is not None]
    duration = [r["duration"] for r in rows]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>vdiff curate report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.strip{margin:1em 0}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>vdiff curate: {esc(str(out_dir))}</h1>",
        f"<p>{len(report['inputs'])} inputs, {report['clips']} candidate clips, "
        f"<b>{report['kept']} kept</b> in {len(report['shards'])} shard(s); "
        f"{report['errors']} input error(s); "
        f"{report['wall_seconds']:.1f} s wall.</p>",
        "<h2>Clips per status</h2><table><tr><th>status</th><th>clips</th></tr>",
        *(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in report["counts"].items()),
        "</table>",
        "<h2>Histograms</h2>",
        f"<img alt='motion' src='data:image/png;base64,"
        f"{histogram_png(motion, title='motion', xlabel='frame diagonals per second')}'>",
        f"<img alt='duration' src='data:image/png;base64,"
        f"{histogram_png(duration, title='duration', xlabel='seconds')}'>",
        "<h2>Inputs</h2><table><tr><th>path</th><th>status</th><th>clips</th><th>kept</th><th>reason</th></tr>",
        *(
            f"<tr><td>{esc(e['path'])}</td><td>{esc(e['status'])}</td><td>{e['clips']}</td>"
            f"<td>{e['kept']}</td><td>{esc(e['reason'] or '')}</td></tr>"
            for e in report["inputs"]
        ),
        "</table>",
        "<h2>Time per stage (seconds, summed over workers)</h2><table>",
        *(f"<tr><td>{esc(k)}</td><td>{v:.2f}</td></tr>" for k, v in report["stage_seconds"].items()),
        "</table>",
        "<h2>Kept clips</h2>",
    ]
    kept = [r for r in rows if r["status"] == "kept"][:max_strips]
    by_shard: dict[str, set[str]] = {}
    for r in kept:
        by_shard.setdefault(r["shard"], set()).add(r["clip_id"])
    for shard, ids in sorted(by_shard.items()):
        clips = _shard_clips(out_dir / "shards" / shard, ids)
        for r in (r for r in kept if r["shard"] == shard):
            img = _strip_png(frame_strip(clips[r["clip_id"]]))
            parts.append(
                f"<div class='strip'><b>{esc(r['clip_id'])}</b> {esc(Path(r['source']).name)} "
                f"[{r['start_frame']}, {r['end_frame']}) motion {r['motion']:.3f}, {r['duration']:.1f} s, "
                f"{esc(shard)}<br><i>{esc(r['caption'] or '')}</i><br>"
                f"<img alt='{esc(r['clip_id'])}' src='data:image/png;base64,{img}'></div>"
            )
    if not kept:
        parts.append("<p>No clip was kept.</p>")
    parts.append("</body></html>")
    path = out_dir / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path
