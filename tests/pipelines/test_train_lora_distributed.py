"""LoRA under FSDP2: 2 gloo ranks (torchrun) train the adapters as one process does, and merge the same."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import webdataset as wds
from safetensors.torch import save, save_file

from pipelines.train import main
from vdiff.config import load_config
from vdiff.models import build_model, load_model, save_model
from vdiff.runs import merge_run
from vdiff.training import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny.yaml"
SHAPES = ["model.in_channels=4", "model.out_channels=4", "model.text_dim=32"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """8 cached samples (latents (4, 3, 2, 6), context (5, 32)) and a base model with a non-zero head."""
    root = tmp_path_factory.mktemp("lora")
    (root / "cached" / "shards").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    with wds.TarWriter(str(root / "cached" / "shards" / "shard-000000.tar")) as w:
        for i in range(8):
            payload = save(
                {"latents": torch.randn(4, 3, 2, 6, generator=g), "context": torch.randn(5, 32, generator=g)}
            )
            w.write({"__key__": f"s{i}", "safetensors": payload, "json": json.dumps({"caption": f"c{i}"})})
    save_file({"context": torch.zeros(5, 32)}, str(root / "cached" / "empty_prompt.safetensors"))
    torch.manual_seed(1)
    model = build_model(load_config(TrainConfig, CONFIG, SHAPES).model)
    torch.nn.init.normal_(model.unembed.proj.weight, std=0.05)
    return root / "cached", save_model(model, root / "base")


def argv(data: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    cached, base = data
    return [
        str(CONFIG),
        *SHAPES,
        f"data.path={cached}",
        f"run_dir={out}",
        f"init_from={base}",
        "lora.rank=4",
        "train.batch_size=4",
        "train.steps=4",
        "train.log_every=1",
        "train.device=cpu",
        "train.progress=false",
        "optim.lr=0.01",
        "optim.warmup_steps=0",
        "parallel.param_dtype=float32",
        *extra,
    ]


def losses(run: Path) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r["grad_norm"]) for r in rows]


@pytest.mark.dist
@pytest.mark.slow
def test_fsdp_lora_trains_and_merges_like_one_process(data: tuple[Path, Path], tmp_path: Path) -> None:
    assert main(argv(data, tmp_path / "one")) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    cmd += ["-m", "pipelines.train", *argv(data, tmp_path / "fsdp")]  # dp_shard=-1: FSDP2 over 2 ranks
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, fsdp = losses(tmp_path / "one"), losses(tmp_path / "fsdp")
    assert len(one) == len(fsdp) == 4
    # NOTE: the same global batch and noise; only the gradient reduction order differs (1e-5)
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(one), atol=1e-5, rtol=1e-5)
    a = load_model(merge_run(tmp_path / "one", tmp_path / "m1"))
    b = load_model(merge_run(tmp_path / "fsdp", tmp_path / "m2"))
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=0, msg=name)
