"""HTML reports: one run (bars, scores, per-video table, frame strips) and two runs side by side."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from vdiff.io.files import atomic_write_text

STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.sub{color:#a15c00}.bad{color:#b00020}"
)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _fmt_ci(ci: list[float] | None) -> str:
    return "—" if not ci else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def bar_chart_png(labels: list[str], series: dict[str, list[float]], *, title: str) -> str:
    """A grouped horizontal bar chart (matplotlib, Agg) as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * max(1, len(labels)) * max(1, len(series))))
    y = np.arange(len(labels))
    height = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        ax.barh(y + k * height, values, height=height, label=name)
    ax.set_yticks(y + height * (len(series) - 1) / 2, labels)
    ax.invert_yaxis()
    ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def per_video_png(values: dict[str, list[float]]) -> str:
    """Per-video results of each dimension as a strip plot (matplotlib, Agg), base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.45 * len(values)))
    rng = np.random.default_rng(0)
    for k, vals in enumerate(values.values()):
        ax.scatter(vals, k + rng.uniform(-0.15, 0.15, len(vals)), s=12, alpha=0.7)
    ax.set_yticks(range(len(values)), list(values))
    ax.invert_yaxis()
    ax.set_title("per-video results")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _scores_table(scores: dict[str, Any]) -> str:
    rows = []
    for label, key in (
        ("leaderboard-comparable", "leaderboard"),
        ("including substitutes", "with_substitutes"),
    ):
        s = scores[key]
        missing = len(s["missing_quality"]) + len(s["missing_semantic"])
        rows.append(
            f"<tr><td>{label}</td><td>{_fmt(s['quality_score'])}</td><td>{_fmt(s['semantic_score'])}</td>"
            f"<td>{_fmt(s['total_score'])}</td><td>{missing}</td></tr>"
        )
    return (
        "<table><tr><th>scores</th><th>quality</th><th>semantic</th><th>total</th>"
        "<th>dimensions missing</th></tr>" + "".join(rows) + "</table>"
    )


def render_report(*, results: dict[str, Any], info: dict[str, Any], strips: dict[str, str]) -> str:
    """The HTML text of one run's report."""
    dims = info["dimensions"]
    scored = [n for n, d in dims.items() if d["aggregate"] is not None and n != "fvd"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>vdiff eval</title><style>{STYLE}</style>"
    ]
    parts.append(f"</head><body><h1>vdiff eval: {html.escape(info['videos_dir'])}</h1>")
    parts.append(
        "<h2>Dimensions</h2><table><tr><th>dimension</th><th>score</th>"
        "<th>95% CI (bootstrap over videos)</th><th>videos</th><th>method</th></tr>"
    )
    for n, d in dims.items():
        cls = "" if d["comparable"] else " class='sub'"
        parts.append(
            f"<tr><td>{html.escape(n)}</td><td>{_fmt(d['aggregate'])}</td><td>{_fmt_ci(d.get('ci95'))}</td>"
            f"<td>{d['num_videos']}</td>"
            f"<td{cls}>{html.escape(d['method'])}</td></tr>"
        )
    parts.append("</table><p class='sub'>Substitute results are stored in")
    parts.append(" <code>__vdiff__/substitute_results.json</code>,")
    parts.append(" never in eval_results.json, and never enter the leaderboard-comparable scores.</p>")
    if scored:
        png = bar_chart_png(
            [n + ("" if dims[n]["comparable"] else " (substitute)") for n in scored],
            {"score": [float(dims[n]["aggregate"]) for n in scored]},
            title="per-dimension score",
        )
        parts.append(f"<img alt='per-dimension bars' src='data:image/png;base64,{png}'>")
        spread = {n: [float(e["video_results"]) for e in results[dims[n]["key"]][1]] for n in scored}
        png = per_video_png({n: v for n, v in spread.items() if v})
        parts.append(f"<img alt='per-video results' src='data:image/png;base64,{png}'>")
    parts.append("<h2>VBench scores</h2>" + _scores_table(info["scores"]))
    per_video: dict[str, dict[str, Any]] = {}
    for n, d in dims.items():
        for e in results.get(d["key"], [None, []])[1]:
            per_video.setdefault(e["video_path"], {})[n] = e["video_results"]
        for e in d["excluded"]:
            if e["video_path"]:
                per_video.setdefault(e["video_path"], {})[n] = "excluded: " + e["reason"]
    parts.append("<h2>Videos</h2><table><tr><th>video</th><th>frames</th>")
    parts += [f"<th>{html.escape(n)}</th>" for n in dims] + ["</tr>"]
    for path, vals in per_video.items():
        strip = strips.get(path, "")
        img = f"<img alt='frames' src='data:image/jpeg;base64,{strip}'>" if strip else ""
        parts.append(f"<tr><td>{html.escape(Path(path).name)}</td><td>{img}</td>")
        parts += [f"<td>{_fmt(vals.get(n))}</td>" for n in dims] + ["</tr>"]
    parts.append("</table>")
    bad = [(e["video_path"], e["reason"]) for e in info["skipped"]]
    bad += [(e["video_path"], e["reason"]) for e in info["missing"]]
    if bad:
        parts.append("<h2>Not scored</h2><table><tr><th>video</th><th>reason</th></tr>")
        parts += [f"<tr><td>{html.escape(p)}</td><td class='bad'>{html.escape(r)}</td></tr>" for p, r in bad]
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(
    path: str | Path, *, results: dict[str, Any], info: dict[str, Any], strips: dict[str, str]
) -> None:
    """Write ``report.html`` for one run (atomically)."""
    atomic_write_text(path, render_report(results=results, info=info, strips=strips))


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``__vdiff__/eval_info.json`` (``eval_info.json`` in outputs written before the
    ``__vdiff__`` folder); a clear error when the folder is not a ``vdiff eval`` output."""
    p = Path(run_dir) / "__vdiff__" / "eval_info.json"
    if not p.is_file():
        p = Path(run_dir) / "eval_info.json"
    if not p.is_file():
        raise FileNotFoundError(f"{run_dir} has no eval_info.json; is it a `vdiff eval --out` folder?")
    return json.loads(p.read_text())


def compare_runs(dir_a: str | Path, dir_b: str | Path) -> dict[str, Any]:
    """Per-dimension aggregates of two runs side by side (with their methods and 95% intervals), and
    ``warnings``: one line per dimension scored by both whose formula or weights differ
    (:func:`eval.provenance.provenance_warnings`)."""
    from eval.provenance import provenance_warnings

    a, b = load_run(dir_a), load_run(dir_b)
    rows = {}
    for n in dict.fromkeys([*a["dimensions"], *b["dimensions"]]):
        da, db = a["dimensions"].get(n, {}), b["dimensions"].get(n, {})
        va, vb = da.get("aggregate"), db.get("aggregate")
        rows[n] = {
            "a": va,
            "b": vb,
            "delta": (vb - va) if va is not None and vb is not None else None,
            "ci_a": da.get("ci95"),
            "ci_b": db.get("ci95"),
            "method_a": da.get("method"),
            "method_b": db.get("method"),
        }
    scores = {
        k: {run: s["scores"]["leaderboard"][k] for run, s in (("a", a), ("b", b))}
        for k in ("quality_score", "semantic_score", "total_score")
    }
    warnings = provenance_warnings(a["dimensions"], b["dimensions"])
    return {"a": str(dir_a), "b": str(dir_b), "dimensions": rows, "scores": scores, "warnings": warnings}


def render_compare(cmp: dict[str, Any]) -> str:
    """HTML for two runs side by side."""
    names = [
        n for n, r in cmp["dimensions"].items() if r["a"] is not None and r["b"] is not None and n != "fvd"
    ]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>vdiff eval compare</title><style>{STYLE}"
    ]
    parts.append(f"</style></head><body><h1>A: {html.escape(cmp['a'])}<br>B: {html.escape(cmp['b'])}</h1>")
    if cmp.get("warnings"):
        parts.append("<h2 class='bad'>Not like for like</h2><ul>")
        parts += [f"<li class='bad'>{html.escape(w)}</li>" for w in cmp["warnings"]]
        parts.append("</ul>")
    if names:
        png = bar_chart_png(
            names,
            {
                "A": [cmp["dimensions"][n]["a"] for n in names],
                "B": [cmp["dimensions"][n]["b"] for n in names],
            },
            title="A vs B",
        )
        parts.append(f"<img alt='A vs B bars' src='data:image/png;base64,{png}'>")
    parts.append(
        "<table><tr><th>dimension</th><th>A</th><th>B</th><th>B − A</th><th>95% CI A</th><th>95% CI B</th>"
        "<th>method A</th><th>method B</th></tr>"
    )
    for n, r in cmp["dimensions"].items():
        parts.append(
            f"<tr><td>{html.escape(n)}</td><td>{_fmt(r['a'])}</td><td>{_fmt(r['b'])}</td><td>{_fmt(r['delta'])}</td>"
            f"<td>{_fmt_ci(r.get('ci_a'))}</td><td>{_fmt_ci(r.get('ci_b'))}</td>"
            f"<td>{_fmt(r['method_a'])}</td><td>{_fmt(r['method_b'])}</td></tr>"
        )
    parts.append(
        "</table><h2>Leaderboard-comparable scores</h2><table><tr><th></th><th>A</th><th>B</th></tr>"
    )
    for k, v in cmp["scores"].items():
        parts.append(f"<tr><td>{k}</td><td>{_fmt(v['a'])}</td><td>{_fmt(v['b'])}</td></tr>")
    parts.append("</table></body></html>")
    return "".join(parts)
