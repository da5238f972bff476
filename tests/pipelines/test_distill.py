"""`vdiff distill` end to end on tiny cached latents: run folder, exact resume, LoRA, 2-rank parity.

A 3-step tiny teacher run is distilled for 4 steps (checkpoints at 2 and 4). Resuming from step 2
must log the uninterrupted run's losses after it (tolerance 1e-6, same process kind); two FSDP
ranks and two Ulysses ranks must log the one-process losses and gradient norms within 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.distill import main
from pipelines.train import main as train_main
from tests.pipelines.test_train import shards, shards_with_a_bad_clip, tiny_overrides  # noqa: F401
from tests.pipelines.test_train_distributed import CONFIG, argv, cached, launch  # noqa: F401
from vdiff.runs import load_run_model
from vdiff.training.distill import TEACHER_DIR

STEPS = 4


def distill_argv(teacher: Path, out: Path, *overrides: str) -> list[str]:
    return [
        str(teacher),
        "--out",
        str(out),
        "distill.student_steps=2",
        "distill.teacher_steps=4",
        "distill.guidance=3",
        "distill.teacher_weights=model",
        "train.batch_size=4",
        f"train.steps={STEPS}",
        "train.log_every=1",
        "train.device=cpu",
        "train.progress=false",
        "train.tensorboard=false",
        "checkpoint.every=2",
        "optim.lr=0.01",
        "optim.warmup_steps=0",
        "optim.grad_clip=0.005",
        "parallel.param_dtype=float32",
        *overrides,
    ]


def metrics(run: Path) -> dict[int, tuple[float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in rows}


@pytest.fixture(scope="module")
def teacher(cached: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A tiny teacher: 3 training steps at a high lr (its output head is no longer zero)."""
    run = tmp_path_factory.mktemp("teacher")
    args = argv(cached, run, "train.steps=3", "train.progress=false", "train.tensorboard=false")
    assert train_main(args) == 0
    return run


@pytest.fixture(scope="module")
def reference(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("student")
    assert main(distill_argv(teacher, run)) == 0
    return run


def assert_close(got: dict, want: dict, tol: float) -> None:
    assert sorted(got) == sorted(want)
    for step in want:
        for g, w in zip(got[step], want[step]):
            assert abs(g - w) <= tol * max(1.0, abs(w)), (step, got, want)


def test_student_run_has_the_training_layout_and_starts_from_the_teacher(teacher: Path, reference: Path):
    rows = metrics(reference)
    assert sorted(rows) == list(range(1, STEPS + 1))
    assert all(grad > 0.005 for _, grad in rows.values())  # the clip is active
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    saved = (reference / "config.yaml").read_text()
    assert "student_steps: 2" in saved and f"init_from: {(reference / TEACHER_DIR).resolve()}" in saved
    # RUN/teacher holds the teacher run's chosen (raw) weights exactly; the student moved away from them
    want = load_run_model(teacher, weights="model").model.state_dict()
    copied = load_run_model(reference, weights="model").run.init_from
    from vdiff.models import load_model

    got = load_model(copied).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    student = load_run_model(reference, weights="model").model.state_dict()
    assert any(not torch.equal(student[k], want[k]) for k in want)


def test_resume_reproduces_the_uninterrupted_run(teacher: Path, reference: Path, tmp_path: Path):
    resume = f"resume={reference / 'checkpoints' / 'step_00000002'}"
    assert main(distill_argv(teacher, tmp_path, resume)) == 0
    want = {s: v for s, v in metrics(reference).items() if s > 2}
    assert_close(metrics(tmp_path), want, 1e-6)


def test_lora_student_resumes_exactly_and_loads_on_the_teacher_base(teacher: Path, tmp_path: Path):
    lora = ["lora.rank=2", "lora.alpha=4", "optim.lr=0.05"]
    full = tmp_path / "full"
    assert main(distill_argv(teacher, full, *lora)) == 0
    part = tmp_path / "part"
    assert main(distill_argv(teacher, part, *lora, f"resume={full / 'checkpoints' / 'step_00000002'}")) == 0
    assert_close(metrics(part), {s: v for s, v in metrics(full).items() if s > 2}, 1e-6)
    model = load_run_model(full, weights="model").model  # adapters merged into RUN/teacher's weights
    base = load_run_model(teacher, weights="model").model.state_dict()
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, base[k])]
    assert moved and all("self_attn" in k or "cross_attn" in k or "ffn" in k for k in moved)
    # `vdiff train --merge-lora` folds a LoRA student into a model folder with the same weights
    assert train_main(["--merge-lora", str(full), str(tmp_path / "merged"), "--weights", "model"]) == 0
    from vdiff.models import load_model

    merged = load_model(tmp_path / "merged").state_dict()
    assert all(torch.allclose(merged[k], v, atol=1e-6) for k, v in model.state_dict().items())


@pytest.mark.dist
@pytest.mark.parametrize(
    "layout", [["parallel.dp_shard=2"], ["parallel.ulysses=2"]], ids=["fsdp2", "ulysses2"]
)
def test_two_ranks_match_one_process(teacher: Path, reference: Path, tmp_path: Path, layout: list[str]):
    launch_distill(2, distill_argv(teacher, tmp_path, *layout))
    assert_close(metrics(tmp_path), metrics(reference), 1e-4)


def launch_distill(world_size: int, args: list[str]) -> None:
    import torch.multiprocessing as mp

    from tests.pipelines.test_train_distributed import free_port

    mp.start_processes(_worker, args=(world_size, free_port(), args), nprocs=world_size, start_method="fork")


def _worker(rank: int, world_size: int, port: int, args: list[str]) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ.update(WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    if main(args) != 0:
        raise RuntimeError(f"rank {rank}: pipelines.distill.main returned non-zero")


def test_a_missing_teacher_is_one_line_and_exit_2(tmp_path: Path, capsys):
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "not a vdiff training run" in err
    assert not (tmp_path / "out").exists()


def test_another_teacher_into_the_same_run_is_refused(teacher: Path, reference: Path, tmp_path: Path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoints").mkdir()
    (other / "config.yaml").write_text((teacher / "config.yaml").read_text())
    assert main(distill_argv(other, reference)) == 2
    err = capsys.readouterr().err
    assert f"distils {teacher}, not {other}" in err and "resume=none" in err


def test_init_from_is_refused(teacher: Path, tmp_path: Path, capsys):
    assert main([str(teacher), "--out", str(tmp_path / "out"), "init_from=x"]) == 2
    assert "init_from is set by vdiff distill" in capsys.readouterr().err


def test_sampling_a_student_run_takes_its_steps_grid_and_no_guidance(reference: Path, tmp_path: Path):
    from vdiff.sampling import SampleConfig
    from vdiff.sampling.loading import with_student_settings

    cfg, chosen = with_student_settings(SampleConfig(), reference)
    assert (cfg.steps, cfg.guidance, cfg.shift, cfg.sampler, cfg.schedule) == (
        2,
        1.0,
        3.0,
        "euler",
        "uniform",
    )
    assert chosen is not None and set(chosen) == {"steps", "guidance", "shift", "sampler", "schedule"}
    # the user's keys win; a training run (no distill section) changes nothing
    cfg, _ = with_student_settings(SampleConfig(), reference, given={"steps", "guidance"})
    assert (cfg.steps, cfg.guidance, cfg.schedule) == (30, 5.0, "uniform")
    assert with_student_settings(SampleConfig(), reference / "nope")[1] is None


def test_distils_from_raw_shards(shards: Path, tmp_path: Path):  # noqa: F811
    """Raw (uncached) shards: the text encoder embeds the captions, the videos give only their shape."""
    teacher_run = tmp_path / "teacher"
    args = tiny_overrides(
        shards, teacher_run, "train.steps=2", "train.progress=false", "train.tensorboard=false"
    )
    assert train_main([str(CONFIG), *args]) == 0
    student = tmp_path / "student"
    assert main(distill_argv(teacher_run, student, "train.steps=2", "train.batch_size=2")) == 0
    assert sorted(metrics(student)) == [1, 2]
    assert (student / "checkpoints" / "step_00000002" / ".metadata").is_file()


def test_bad_clips_are_skipped_counted_and_listed_as_in_training(
    shards_with_a_bad_clip: Path,  # noqa: F811
    tmp_path: Path,
):
    """data.on_error=skip: the undecodable clip is passed over, counted in metrics and listed in
    RUN/bad_samples.jsonl, as `vdiff train` does."""
    teacher_run = tmp_path / "teacher"
    common = ("train.progress=false", "train.tensorboard=false", "data.shuffle=false")
    assert (
        train_main(
            [str(CONFIG), *tiny_overrides(shards_with_a_bad_clip, teacher_run, "train.steps=1", *common)]
        )
        == 0
    )
    student = tmp_path / "student"
    assert (
        main(distill_argv(teacher_run, student, "train.steps=2", "train.batch_size=2", "data.shuffle=false"))
        == 0
    )
    rows = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert [r["data_skipped"] for r in rows] == [1, 1]
    listed = [json.loads(line) for line in (student / "bad_samples.jsonl").read_text().splitlines()]
    assert [(Path(r["shard"]).name, r["key"]) for r in listed] == [("a-bad.tar", "clip-bad")]
