"""`pipelines.train` on several gloo processes: the same losses as one process, and resharding resume.

Every layout trains 5 steps on the same global batch of cached latents (9 tokens per sample,
not divisible by the sequence-parallel degree) and must log the losses and gradient norms of a
one-process run within 1e-4. NOTE: AdamW is invariant to the scale of the gradients, and the
zero-initialised output projection keeps the blocks' gradients tiny at first, so a
sequence-parallel gradient-scaling bug would hide in the losses of a short, gentle run. The
runs here use a high lr without warmup, clip below the gradient norm, and compare the norms too.

Checkpoints written by 2 FSDP ranks resume on 1 rank, and those of 1 rank resume on 2 Ulysses
ranks, with the next losses of the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import webdataset as wds
from safetensors.torch import save, save_file

from pipelines.train import main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny.yaml"
STEPS = 5


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 cached samples: latents (4, 3, 2, 6) -> 9 tokens, text context (5, 32), and the empty prompt."""
    root = tmp_path_factory.mktemp("cached")
    (root / "shards").mkdir()
    g = torch.Generator().manual_seed(0)
    with wds.TarWriter(str(root / "shards" / "shard-000000.tar")) as w:
        for i in range(8):
            latents, context = torch.randn(4, 3, 2, 6, generator=g), torch.randn(5, 32, generator=g)
            payload = save({"latents": latents, "context": context})
            w.write({"__key__": f"s{i}", "safetensors": payload, "json": json.dumps({"caption": f"c{i}"})})
    save_file({"context": torch.zeros(5, 32)}, str(root / "empty_prompt.safetensors"))
    return root


def argv(data: Path, out: Path, *overrides: str) -> list[str]:
    base = [
        f"data.path={data}",
        f"run_dir={out}",
        "model.in_channels=4",
        "model.out_channels=4",
        "model.text_dim=32",
        "train.batch_size=4",
        f"train.steps={STEPS}",
        "train.log_every=1",
        "checkpoint.every=3",
        "train.device=cpu",
        "optim.lr=0.02",
        "optim.warmup_steps=0",
        "optim.grad_clip=0.5",
        "parallel.param_dtype=float32",
    ]
    return [str(CONFIG), *base, *overrides]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, args: list[str]) -> None:
    # NOTE: the environment torchrun gives each process.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ.update(WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    if main(args) != 0:
        raise RuntimeError(f"rank {rank}: pipelines.train.main returned non-zero")


def launch(world_size: int, args: list[str]) -> None:
    """Run ``pipelines.train.main(args)`` on ``world_size`` processes, or in this one for 1."""
    if world_size == 1:
        assert "WORLD_SIZE" not in os.environ
        assert main(args) == 0
        return
    # NOTE: fork (not spawn) reuses this process's imports: each layout starts in about a second.
    mp.start_processes(_worker, args=(world_size, free_port(), args), nprocs=world_size, start_method="fork")


def losses(run: Path) -> dict[int, tuple[float, float]]:
    """Step -> (loss, gradient norm) from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in rows}


@pytest.fixture(scope="module")
def reference(cached: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, 5 steps, checkpoints at steps 3 and 5."""
    run = tmp_path_factory.mktemp("ref")
    launch(1, argv(cached, run))
    return run


@pytest.fixture(scope="module")
def fsdp2(cached: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two FSDP ranks (dp_shard=2), otherwise like ``reference``."""
    run = tmp_path_factory.mktemp("fsdp2")
    launch(2, argv(cached, run, "parallel.dp_shard=2"))
    return run


def assert_same_losses(got: dict[int, tuple[float, float]], want: dict[int, tuple[float, float]]) -> None:
    assert sorted(got) == sorted(want)
    for step in want:
        for g, w in zip(got[step], want[step]):
            assert abs(g - w) <= 1e-4 * max(1.0, abs(w)), (step, got, want)


@pytest.mark.dist
def test_fsdp_matches_one_process(reference: Path, fsdp2: Path):
    ref = losses(reference)
    assert sorted(ref) == list(range(1, STEPS + 1)) and len({loss for loss, _ in ref.values()}) == STEPS
    assert all(norm > 0.5 for _, norm in ref.values())  # the clip is active
    assert_same_losses(losses(fsdp2), ref)


@pytest.mark.dist
@pytest.mark.parametrize(
    "layout",
    [
        ["parallel.ulysses=2"],
        ["parallel.ring=2"],
        ["parallel.dp_replicate=2", "parallel.dp_shard=1"],  # DDP
    ],
    ids=["ulysses2", "ring2", "ddp2"],
)
def test_two_rank_layouts_match_one_process(cached: Path, reference: Path, tmp_path: Path, layout: list[str]):
    launch(2, argv(cached, tmp_path, *layout))
    assert_same_losses(losses(tmp_path), losses(reference))


@pytest.mark.dist
@pytest.mark.parametrize(
    "layout",
    [
        ["parallel.dp_shard=2", "parallel.ulysses=2"],  # 2 data shards x 2 sequence shards
        ["parallel.dp_replicate=2", "parallel.dp_shard=2"],  # HSDP
        pytest.param(
            ["parallel.dp_replicate=2", "parallel.dp_shard=1", "parallel.ring=2"], marks=pytest.mark.slow
        ),
        pytest.param(["parallel.ulysses=2", "parallel.ring=2"], marks=pytest.mark.slow),
    ],
    ids=["fsdp2_x_ulysses2", "hsdp2x2", "ddp2_x_ring2", "ulysses2_x_ring2"],
)
def test_four_rank_layouts_match_one_process(
    cached: Path, reference: Path, tmp_path: Path, layout: list[str]
):
    launch(4, argv(cached, tmp_path, *layout))
    assert_same_losses(losses(tmp_path), losses(reference))


@pytest.mark.dist
def test_bf16_parameters_train_close_to_float32(cached: Path, reference: Path, tmp_path: Path):
    """FSDP2 with bf16 compute parameters and fp32 reduction (the GPU default) runs and stays close."""
    args = [a for a in argv(cached, tmp_path, "parallel.ulysses=2") if a != "parallel.param_dtype=float32"]
    launch(2, [*args, "parallel.param_dtype=bfloat16"])
    got, want = losses(tmp_path), losses(reference)
    assert sorted(got) == sorted(want)
    for step in want:
        assert abs(got[step][0] - want[step][0]) < 0.02 * want[step][0], (step, got, want)


@pytest.mark.dist
def test_fsdp_checkpoint_resumes_on_one_rank(cached: Path, reference: Path, fsdp2: Path, tmp_path: Path):
    launch(1, argv(cached, tmp_path, f"resume={fsdp2 / 'checkpoints' / 'step_00000003'}"))
    got = losses(tmp_path)
    assert_same_losses(got, {s: v for s, v in losses(reference).items() if s > 3})


@pytest.mark.dist
def test_one_rank_checkpoint_resumes_on_two_ulysses_ranks(cached: Path, reference: Path, tmp_path: Path):
    resume = f"resume={reference / 'checkpoints' / 'step_00000003'}"
    launch(2, argv(cached, tmp_path, resume, "parallel.ulysses=2"))
    assert_same_losses(losses(tmp_path), {s: v for s, v in losses(reference).items() if s > 3})


@pytest.mark.dist
@pytest.mark.slow
def test_torchrun_command_line(cached: Path, reference: Path, tmp_path: Path):
    """The documented launch: ``torchrun --nproc_per_node=2 -m pipelines.train CONFIG ...``."""
    port = f"--master_port={free_port()}"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", port]
    layout = ["parallel.ring=2", "parallel.activation_checkpoint=full"]
    cmd = [*torchrun, "-m", "pipelines.train", *argv(cached, tmp_path, *layout)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_losses(losses(tmp_path), losses(reference))


def test_a_layout_that_does_not_fit_the_world_is_a_clear_error(cached: Path, tmp_path: Path, capsys):
    assert main(argv(cached, tmp_path, "parallel.ulysses=2")) == 2
    err = capsys.readouterr().err
    assert "ulysses=2" in err and "does not divide the world size 1" in err
    assert not (tmp_path / "checkpoints").exists()
