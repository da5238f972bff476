"""Collect the steps of ``bench/gpu_all.sh`` into one markdown table and one JSON.

    python bench/gpu_all_report.py OUT

reads ``OUT/steps.tsv`` (one line a step: name, status, exit code, seconds, budget seconds,
command) and each step's ``OUT/<name>.json`` / ``OUT/<name>.log``, and writes
``OUT/gpu_all.md`` (a table: step, status, time against its budget, key figures) and
``OUT/gpu_all.json`` (every step with its full JSON). A step without JSON (a failure, a
timeout, the test run) shows the last line of its log instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_steps(out: Path) -> list[dict[str, Any]]:
    """The rows of ``OUT/steps.tsv`` as dicts."""
    steps = []
    for line in (out / "steps.tsv").read_text().splitlines():
        name, status, rc, seconds, budget, command = line.split("\t", 5)
        steps.append(
            {"step": name, "status": status, "rc": int(rc), "seconds": float(seconds),
             "budget_s": int(budget), "command": command}
        )  # fmt: skip
    return steps


def last_line(path: Path) -> str:
    """The log's last non-empty line (pytest's summary, a traceback's error), or ''."""
    if not path.is_file():
        return ""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def attention_summary(data: Any) -> str:
    """``N=32768 D=128 video: sparse_sage 2.31x (kept 0.21, cos 0.995)`` for each sparse_sage row."""
    parts = [
        f"N={r['tokens']} D={r['head_dim']} {r['inputs']}: {r['backend']} {r['speedup']:.2f}x SDPA "
        f"(kept {r['kept']:.2f}, cos {r['cos_sim']:.4f})"
        for r in data
        if r["backend"] == "sparse_sage"
    ]
    return "; ".join(parts)


def train_summary(data: dict[str, Any]) -> str:
    """``vdiff eager 812 ms (MFU 41.0 %, 23 GiB)`` for each row."""
    parts = []
    for r in data["rows"]:
        mfu = f"MFU {100 * r['mfu']:.1f} %" if r.get("mfu") is not None else f"{r['tflops']:.3g} TFLOP/s"
        parts.append(
            f"{r['size']} {r['model']} {r['variant']}: {r['ms']:.1f} ms, {mfu}, "
            f"step {r['step_mib'] / 1024:.1f} GiB"
        )
    return "; ".join(parts)


def sample_summary(data: dict[str, Any]) -> str:
    """Part 1's ratio and each variant's time, speedup and PSNR against dense."""
    parts = [f"{data['tokens']} tokens"]
    vs = data.get("vs_diffusers")
    if vs:
        parts.append(f"vdiff/diffusers denoising {vs['denoising: ratio']:.3f}")
    for name, v in data["variants"].items():
        parts.append(
            f"{name}: {v['wall_s']:.2f} s ({v['speedup']:.2f}x, PSNR {v['min_psnr_db']:.1f} dB, "
            f"{v['peak_mib'] / 1024:.1f} GiB)"
        )
    return "; ".join(parts)


def eval_models_summary(data: dict[str, Any]) -> str:
    """``clip_b32 vdiff 12.3 ms (0.95x)`` for each row."""
    return "; ".join(
        f"{r['model']} {r['impl']} {r['ms']:.1f} ms"
        + (f" ({r['ratio']:.2f}x)" if r["ratio"] is not None else "")
        for r in data["rows"]
    )


def parallel_summary(data: dict[str, Any]) -> str:
    return "; ".join(
        f"{r['mode']}: {r['samples_per_s']:.2f} samples/s ({r['ratio']:.2f}x DDP)" for r in data["rows"]
    )


SUMMARIES: dict[str, Callable[[Any], str]] = {
    "attention": attention_summary,
    "train_vs_diffusers": train_summary,
    "train_variants": train_summary,
    "train_compile": train_summary,
    "sample": sample_summary,
    "eval_models": eval_models_summary,
    "parallel_train": parallel_summary,
}


def summarise(out: Path, step: dict[str, Any]) -> tuple[str, Any]:
    """(key figures, the step's JSON or None) of one step."""
    path = out / f"{step['step']}.json"
    data = json.loads(path.read_text()) if path.is_file() and step["status"] == "ok" else None
    summary = SUMMARIES.get(step["step"])
    if data is not None and summary is not None:
        try:
            return summary(data), data
        except (KeyError, TypeError, ValueError) as e:
            return f"(could not summarise {path.name}: {e!r})", data
    return last_line(out / f"{step['step']}.log"), data


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0], "steps.tsv").is_file():
        print(
            "usage: python bench/gpu_all_report.py OUT  (OUT holds the steps.tsv gpu_all.sh writes)",
            file=sys.stderr,
        )
        return 2
    out = Path(args[0])
    steps = read_steps(out)
    meta_path = out / "machine.txt"
    machine = meta_path.read_text().strip() if meta_path.is_file() else ""
    lines = [
        f"# bench/gpu_all.sh: {machine}",
        "",
        "| step | status | seconds / budget | key figures (log: OUT/<step>.log) |",
        "|---|---|---|---|",
    ]
    for step in steps:
        text, data = summarise(out, step)
        step["summary"], step["result"] = text, data
        cell = text.replace("|", "\\|")
        lines.append(
            f"| {step['step']} | {step['status']} | {step['seconds']:.0f} / {step['budget_s']} | {cell} |"
        )
    total = sum(s["seconds"] for s in steps)
    budget = sum(s["budget_s"] for s in steps if s["status"] != "skipped")
    lines += ["", f"total {total:.0f} s of a {budget} s budget; {sum(s['status'] == 'ok' for s in steps)} of "
              f"{len(steps)} steps ok"]  # fmt: skip
    (out / "gpu_all.md").write_text("\n".join(lines) + "\n")
    report = {"machine": machine, "total_s": total, "budget_s": budget, "steps": steps}
    (out / "gpu_all.json").write_text(json.dumps(report, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
