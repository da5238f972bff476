"""`pipelines.train` with optim.name=muon and optim.name=shampoo: an interrupted run resumes exactly.

The runs train the tiny config on cached latents (no encoders to load): a full run, and a copy
of it cut back to its first checkpoint and the metrics of one more step (as if killed there),
then resumed with ``resume=auto``. Both must log the same losses, gradient norms and lr
(tolerance 1e-6). The Shampoo settings make the resumed part cross preconditioning: the
inverse roots computed at step 2 are used, from the checkpoint, until the refresh at step 5.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import webdataset as wds
from safetensors.torch import save, save_file
from torch.distributed.checkpoint import FileSystemReader

from pipelines.train import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
OPTIMIZERS = {
    "muon": ["optim.name=muon"],
    "shampoo": [
        "optim.name=shampoo",
        "optim.shampoo.max_preconditioner_dim=16",
        "optim.shampoo.start_preconditioning_step=2",
        "optim.shampoo.precondition_frequency=3",
    ],
}


@pytest.fixture(scope="module")
def latents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 cached samples in one shard: latents (4, 2, 4, 4) -> 8 tokens, text context (3, 16)."""
    root = tmp_path_factory.mktemp("latents")
    (root / "shards").mkdir()
    gen = torch.Generator().manual_seed(1)
    with wds.TarWriter(str(root / "shards" / "shard-000000.tar")) as tar:
        for i in range(6):
            latent, context = torch.randn(4, 2, 4, 4, generator=gen), torch.randn(3, 16, generator=gen)
            payload = save({"latents": latent, "context": context})
            tar.write({"__key__": f"k{i}", "safetensors": payload, "json": json.dumps({"caption": str(i)})})
    save_file({"context": torch.zeros(3, 16)}, str(root / "empty_prompt.safetensors"))
    return root


def run_args(data: Path, run: Path, optimizer: str) -> list[str]:
    overrides = [
        f"data.path={data}",
        f"run_dir={run}",
        "model.in_channels=4",
        "model.out_channels=4",
        "model.text_dim=16",
        "train.batch_size=2",
        "train.steps=6",
        "train.log_every=1",
        "checkpoint.every=2",
        "train.device=cpu",
        "optim.lr=0.01",
        "optim.warmup_steps=1",
        "optim.weight_decay=0.01",
        *OPTIMIZERS[optimizer],
    ]
    return [str(CONFIG), *overrides]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoints(run: Path) -> list[Path]:
    """Complete checkpoint folders of ``run``, by step."""
    done = [p for p in (run / "checkpoints").iterdir() if (p / ".metadata").is_file()]
    return sorted(done, key=lambda p: int(re.sub(r"\D", "", p.name)))


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_interrupted_run_resumes_with_the_same_losses(latents: Path, tmp_path: Path, optimizer: str) -> None:
    full = tmp_path / "full"
    assert main(run_args(latents, full, optimizer)) == 0
    saved = checkpoints(full)
    assert len(saved) == 3  # steps 2, 4, 6

    # killed after step 3: only the step-2 checkpoint and the metrics up to step 3 exist
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for ckpt in checkpoints(cut)[1:]:
        shutil.rmtree(ckpt)
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics(full)[:3]))
    assert main(run_args(latents, cut, optimizer)) == 0

    a, b = metrics(full), metrics(cut)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b):
        for key in ("loss", "grad_norm", "lr"):
            assert abs(x[key] - y[key]) <= 1e-6, (key, x, y)
    assert len({r["loss"] for r in a}) == 6  # it trains

    # the checkpoint holds this optimizer's state (Muon's momentum, Shampoo's factors and roots)
    keys = FileSystemReader(str(saved[0])).read_metadata().state_dict_metadata
    q = "optim.state.blocks.0.self_attn.q.weight"
    want = ["momentum_buffer"] if optimizer == "muon" else ["graft_sq", "L_0", "R_0", "L_root_0", "R_root_0"]
    assert all(f"{q}.{k}" in keys for k in want), sorted(k for k in keys if k.startswith(q))
    if optimizer == "muon":  # AdamW keeps the rest
        assert "optim.state.unembed.proj.weight.exp_avg_sq" in keys and f"{q}.exp_avg_sq" not in keys
