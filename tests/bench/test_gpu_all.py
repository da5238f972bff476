"""``bench/gpu_all.sh --smoke``: the GPU script's every step on CPU at tiny sizes, so it cannot rot
between GPU runs. Checks the exit status, that the markdown table and the JSON list every step
with its status, and that each benchmark's JSON holds figures consistent with their definitions
(MFU = model FLOPs rate over the peak given by ``VDIFF_PEAK_TFLOPS``; FLOPs from
``vdiff.models.flops.train_flops``, itself checked against FlopCounterMode)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from vdiff.models import ModelConfig
from vdiff.models.flops import train_flops

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_all.sh"
STEPS = [
    "kernel_tests",
    "attention",
    "train_vs_diffusers",
    "train_variants",
    "train_compile",
    "sample",
    "eval_models",
    "parallel_train",
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_all")
    env = {**os.environ, "VDIFF_PEAK_TFLOPS": "1"}  # NOTE: a CPU has no table entry; this exercises MFU
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(out), "--smoke"], capture_output=True, text=True, env=env, timeout=400
    )
    return proc, out


def test_smoke_run_passes_and_writes_table_and_json(smoke) -> None:
    proc, out = smoke
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_all.json").read_text())
    assert [s["step"] for s in report["steps"]] == STEPS
    status = {s["step"]: s["status"] for s in report["steps"]}
    assert status.pop("train_compile") == "skipped"
    assert set(status.values()) == {"ok"}
    table = (out / "gpu_all.md").read_text().splitlines()
    assert table[2].startswith("| step | status | seconds / budget |")
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| step ")]
    assert [r.split(" | ")[0][2:] for r in rows] == STEPS
    for step in report["steps"]:
        if step["status"] == "ok":
            assert 0 < step["seconds"] <= step["budget_s"] + 15  # NOTE: timeout -k 10 bounds each step
            assert (out / f"{step['step']}.log").is_file()


def test_smoke_figures_are_consistent(smoke) -> None:
    _, out = smoke
    steps = {s["step"]: s for s in json.loads((out / "gpu_all.json").read_text())["steps"]}
    assert "collected" in steps["kernel_tests"]["summary"]
    attention = steps["attention"]["result"]
    assert {r["backend"] for r in attention} >= {"sdpa", "sparse_sage"}
    for name in ("train_vs_diffusers", "train_variants"):
        result = steps[name]["result"]
        assert result["peak_flops"] == 1e12
        for row in result["rows"]:
            size = result["sizes"][row["size"]]
            # the model the benchmark builds: Size.wan_config converted by config_from_diffusers
            heads, head_dim = size["heads"], size["head_dim"]
            cfg = ModelConfig(num_heads=heads, head_dim=head_dim, ffn_dim=size["ffn_dim"],
                              num_layers=size["layers"], text_dim=size["text_dim"], freq_dim=256)  # fmt: skip
            flops = size["batch"] * train_flops(cfg, tokens=row["tokens"], text_len=size["text_len"])
            assert row["tflops"] == pytest.approx(flops / (row["ms"] / 1e3) / 1e12, rel=1e-9)
            assert row["mfu"] == pytest.approx(row["tflops"], rel=1e-9)  # peak 1 TFLOP/s
    assert {r["variant"] for r in steps["train_variants"]["result"]["rows"]} == {"eager", "ac", "fsdp"}
    sample = steps["sample"]["result"]["variants"]
    assert set(sample) == {"dense", "teacache 0.1", "sparse_sage"}
    assert sample["dense"]["speedup"] == 1.0 and all(v["peak_mib"] > 0 for v in sample.values())
    assert {r["model"] for r in steps["eval_models"]["result"]["rows"]} == {"clip_b32", "dino_vitb16"}
    modes = [r["mode"] for r in steps["parallel_train"]["result"]["rows"]]
    assert modes == ["DDP", "FSDP", "FSDP + Ulysses", "FSDP + ring"]


def test_usage_errors() -> None:
    bad = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("usage: bash bench/gpu_all.sh OUT")
    if not torch.cuda.is_available():
        no_gpu = subprocess.run(
            ["bash", str(SCRIPT), "/tmp/vdiff-gpu-all-unused"], capture_output=True, text=True
        )
        assert no_gpu.returncode == 2
        assert "no CUDA device" in no_gpu.stderr and "--smoke" in no_gpu.stderr
