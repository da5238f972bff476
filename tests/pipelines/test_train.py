"""End-to-end training on tiny synthetic clips: overfitting, metrics, checkpoints, exact resume."""

from __future__ import annotations

import json
import shutil
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import webdataset as wds

from data_prep.synthetic import moving_shapes, shape_caption
from pipelines.train import main, train
from vdiff.checkpoint import latest_checkpoint, load_checkpoint
from vdiff.config import load_config
from vdiff.data import ShardLoader
from vdiff.diffusion import add_noise, draw_training_noise, sigma_to_timestep, velocity_target
from vdiff.encoders import build_text_encoder, build_vae
from vdiff.io.video import encode_mp4, probe
from vdiff.models import build_model, load_model, model_config, save_model
from vdiff.optim import build_optimizer
from vdiff.training import TrainConfig, validation_videos

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
CLIPS = [
    ("red", "circle", "left"),
    ("blue", "square", "right"),
    ("green", "triangle", "up"),
    ("white", "circle", "down"),
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 captioned moving-shape clips (12 frames, 24x24 at 8 fps) in two WebDataset shards."""
    root = tmp_path_factory.mktemp("clips")
    (root / "shards").mkdir()
    for s in range(2):
        with wds.TarWriter(str(root / "shards" / f"shard-{s:06d}.tar")) as w:
            for i in (2 * s, 2 * s + 1):
                color, shape, direction = CLIPS[i]
                frames = moving_shapes(
                    color, shape, direction, num_frames=12, height=24, width=24, fps=8.0, seed=i
                )
                meta = {"caption": shape_caption(color, shape, direction), "fps": 8.0, "num_frames": 12,
                        "width": 24, "height": 24}  # fmt: skip
                w.write({"__key__": f"clip-{i}", "mp4": encode_mp4(frames, 8.0), "json": json.dumps(meta)})
    return root


def tiny_overrides(data: Path, out: Path, *overrides: str) -> list[str]:
    base = [
        f"data.path={data}",
        f"run_dir={out}",
        "data.num_frames=4",
        "data.height=16",
        "data.width=16",
        "text.max_length=8",
        "train.batch_size=2",
        "train.log_every=1",
        "train.device=cpu",
    ]
    return [*base, *overrides]


def tiny_config(data: Path, out: Path, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, CONFIG, tiny_overrides(data, out, *overrides))


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tb_scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a TensorBoard scalar in RUN/tb, read back as TensorBoard would."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def killed_after_step_3(full: Path, cut: Path) -> Path:
    """A copy of a 4-step run (checkpoints at 2 and 4) as if killed after step 3: step-2 and 3 rows."""
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step_00000004")
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(full)[:3]))
    return cut


def eval_loss(cfg: TrainConfig, model: torch.nn.Module) -> float:
    """Flow loss on the whole dataset at fixed σ and noise (seeds 0..3): the overfitting measure."""
    loader = ShardLoader(cfg.data, batch_size=4, seed=0)
    samples = [loader.load(i, 0) for i in range(4)]
    video = torch.stack([s["video"] for s in samples])
    x0 = build_vae(cfg.vae).encode(video)
    ctx = build_text_encoder(cfg.text).encode([s["caption"] for s in samples])
    sigma, noise, _ = draw_training_noise(x0, seeds=[0, 1, 2, 3])
    with torch.no_grad():
        pred = model(add_noise(x0, noise, sigma), sigma_to_timestep(sigma), ctx)
    return torch.nn.functional.mse_loss(pred, velocity_target(x0, noise)).item()


def test_tiny_model_overfits_the_clips(shards: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        shards,
        tmp_path / "run",
        "train.steps=30",
        "optim.lr=0.003",
        "optim.warmup_steps=0",
        "flow.caption_dropout=0",
    )
    torch.manual_seed(cfg.seed)
    before = eval_loss(cfg, build_model(cfg.model))
    run = train(cfg)
    metrics = rows(run)
    assert [r["step"] for r in metrics] == list(range(1, 31))
    keys = {"step", "loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "max_memory_mb", "time"}
    assert all(set(r) >= keys for r in metrics)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics)
    # throughput leaves out the first train.warmup_log_steps=2 steps; then 16 latent tokens per
    # sample: (4 frames, 16x16 px) -> pixel latents (4, 4, 4) -> patch (1, 2, 2) -> 4 * 2 * 2
    assert [r["samples_per_s"] for r in metrics[:2]] == [None, None]
    assert all(r["samples_per_s"] > 0 for r in metrics[2:])
    assert all(r["tokens_per_s"] == pytest.approx(16 * r["samples_per_s"], rel=1e-9) for r in metrics[2:])
    # on CPU: the process's peak RSS (resource.getrusage), never decreasing
    peaks = [r["max_memory_mb"] for r in metrics]
    assert peaks[0] > 10 and peaks == sorted(peaks)
    # TensorBoard holds the same losses (float32 there)
    assert [s for s, _ in tb_scalars(run, "train/loss")] == list(range(1, 31))
    for (_, v), r in zip(tb_scalars(run, "train/loss"), metrics):
        assert v == pytest.approx(r["loss"], rel=1e-6)
    model = build_model(cfg.model)
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_00000030"
    state = load_checkpoint(ckpt, model=model, optimizer=build_optimizer(model, cfg.optim))
    assert state["step"] == 30 and state["data"] == {"epoch": 14, "step_in_epoch": 2}  # 2 batches per epoch
    after = eval_loss(cfg, model)
    # NOTE: the zero-initialised output starts at E|noise − x0|²; 30 steps cut it by ~14 % (measured on
    # this data, deterministic on CPU); 8 % leaves a margin yet fails a model that learns nothing.
    assert after < 0.92 * before, (before, after)
    first, last = sum(r["loss"] for r in metrics[:5]) / 5, sum(r["loss"] for r in metrics[-5:]) / 5
    assert last < first
    saved = load_config(TrainConfig, run / "config.yaml")
    assert saved == cfg


def test_resume_reproduces_the_uninterrupted_run(shards: Path, tmp_path: Path) -> None:
    common = ("train.steps=4", "checkpoint.every=2", "optim.schedule=cosine", "optim.warmup_steps=1")
    full = train(tiny_config(shards, tmp_path / "full", *common))
    cut = killed_after_step_3(full, tmp_path / "cut")
    train(tiny_config(shards, cut, *common))
    a, b = rows(full), rows(cut)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    # TensorBoard: the killed run's events after the checkpoint were purged, each step once
    assert [s for s, _ in tb_scalars(cut, "train/loss")] == [1, 2, 3, 4]
    assert [v for _, v in tb_scalars(cut, "train/loss")] == pytest.approx([r["loss"] for r in a], rel=1e-6)
    # CPU, same seeds and data position: bit-identical losses and gradient norms
    assert [(r["loss"], r["grad_norm"], r["lr"]) for r in a] == [
        (r["loss"], r["grad_norm"], r["lr"]) for r in b
    ]
    cfg = tiny_config(shards, tmp_path / "x")
    models = []
    for run in (full, cut):
        m, e = build_model(cfg.model), build_model(cfg.model)
        load_checkpoint(
            run / "checkpoints" / "step_00000004", model=m, optimizer=build_optimizer(m, cfg.optim), ema=e
        )
        models.append((m, e))
    for (m1, e1), (m2, e2) in [models]:
        assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
        assert all(torch.equal(p, q) for p, q in zip(e1.parameters(), e2.parameters()))
        assert not all(torch.equal(p, q) for p, q in zip(m1.parameters(), e1.parameters()))


def test_cli_help_and_bad_keys(shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    assert "train.batch_size" in capsys.readouterr().out
    assert main([str(CONFIG), "train.batchsize=3"]) == 2
    assert "did you mean train.batch_size" in capsys.readouterr().err
    assert main([str(CONFIG), "train.out=x"]) == 2
    assert "train.out is now run_dir" in capsys.readouterr().err
    cfg = tiny_config(
        shards, tmp_path / "bad", "model.in_channels=16", "model.out_channels=16", "train.steps=1"
    )
    with pytest.raises(ValueError, match="set both to 48"):
        train(cfg)


def test_validation_samples_are_mp4s_of_the_clip_length(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prompts = "train.sample_prompts=[a red circle moving left,a blue square moving right]"
    cfg = tiny_config(
        shards, tmp_path / "s", "train.steps=4", "train.sample_every=2", "train.sample_steps=3", prompts
    )
    run = train(cfg)
    folders = sorted(p.name for p in (run / "samples").iterdir())
    assert folders == ["step_00000002", "step_00000004"]
    for name in folders:
        videos = sorted((run / "samples" / name).glob("*.mp4"))
        assert [v.name for v in videos] == ["00.mp4", "01.mp4"]
        for v in videos:
            meta = probe(v)
            assert (meta.num_frames, meta.width, meta.height) == (4, 16, 16)  # data.num_frames, width, height
    err = capsys.readouterr().err  # the progress bar (rank 0, stderr), never in metrics.jsonl
    assert "train: 100%" in err and "4/4" in err and "it/s" not in (run / "metrics.jsonl").read_text()
    lines = (run / "samples" / "step_00000004" / "prompts.txt").read_text().splitlines()
    assert lines == ["00\ta red circle moving left", "01\ta blue square moving right"]


def test_validation_samples_from_cached_shards(shards: Path, tmp_path: Path) -> None:
    """Cached shards carry no encoders: training builds the configured ones to embed and decode."""
    from pipelines.cache import main as cache_main

    sizes = ["data.num_frames=4", "data.height=16", "data.width=16", "text.max_length=8"]
    cached = tmp_path / "cache"
    assert cache_main([str(shards), "--out", str(cached), "--config", str(CONFIG), *sizes]) == 0
    run = train(
        tiny_config(cached, tmp_path / "run", "train.steps=1", "train.sample_every=1", "train.sample_steps=2")
    )
    (video,) = (run / "samples" / "step_00000001").glob("*.mp4")
    assert probe(video).num_frames == 4


def test_validation_videos_decode_the_euler_solution() -> None:
    """Given the exact velocity noise − x0, the Euler loop lands on x0 (closed form), then decodes it."""
    from vdiff.diffusion import flow_sigmas
    from vdiff.sampling import initial_noise

    shape, seeds = (48, 2, 4, 4), [3, 4]
    x0 = torch.rand(2, *shape) * 2 - 1
    noise = initial_noise(shape, seeds)

    def exact(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return noise - x0  # the straight path's velocity, whatever x and t are

    vae = build_vae(load_config(TrainConfig, CONFIG).vae)
    videos = validation_videos(
        exact,
        context=torch.zeros(2, 1, 1),
        latent_shape=shape,
        seeds=seeds,
        sigmas=flow_sigmas(5, shift=3.0),
        vae=vae,
        autocast=nullcontext(),
    )
    torch.testing.assert_close(videos, vae.decode(x0), atol=1e-5, rtol=0)


def test_bf16_autocast_and_time_budget(shards: Path, tmp_path: Path) -> None:
    # a budget of ~0 minutes stops after the first step, with a checkpoint to resume from
    overrides = ("train.bf16=true", "train.steps=50", "train.max_minutes=0.000001")
    cfg = tiny_config(shards, tmp_path / "bf16", *overrides)
    run = train(cfg)
    metrics = rows(run)
    assert [r["step"] for r in metrics] == [1] and torch.isfinite(torch.tensor(metrics[0]["loss"]))
    assert latest_checkpoint(run / "checkpoints") == run / "checkpoints" / "step_00000001"


LORA = ("lora.rank=4", "lora.alpha=8")


@pytest.fixture(scope="module")
def lora_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder standing in for a trained base: random weights, a non-zero output head."""
    torch.manual_seed(123)
    model = build_model(load_config(TrainConfig, CONFIG).model)
    torch.nn.init.normal_(model.unembed.proj.weight, std=0.05)
    return save_model(model, tmp_path_factory.mktemp("base") / "model")


def checkpoint_keys(ckpt: Path) -> list[str]:
    import torch.distributed.checkpoint as dcp

    return list(dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata)


def test_lora_checkpoints_hold_only_adapters_and_resume_exactly(
    shards: Path, lora_base: Path, tmp_path: Path
) -> None:
    common = (*LORA, f"init_from={lora_base}", "train.steps=4", "checkpoint.every=2", "optim.warmup_steps=1")
    full = train(tiny_config(shards, tmp_path / "full", *common))
    keys = checkpoint_keys(full / "checkpoints" / "step_00000004")
    weights = [k for k in keys if k.startswith(("model.", "ema."))]
    # 2 blocks x 10 targets (self/cross q, k, v, o; ffn fc1, fc2) x (lora_A, lora_B), for model and EMA
    assert len(weights) == 2 * 2 * 10 * 2 and all(".lora_A." in k or ".lora_B." in k for k in weights)
    assert all(".lora_" in k for k in keys if k.startswith("optim.state."))
    cut = killed_after_step_3(full, tmp_path / "cut")
    train(tiny_config(shards, cut, *common))
    a, b = rows(full), rows(cut)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    # NOTE: same seed, CPU: the resumed run's losses equal the uninterrupted run's (tolerance 1e-6)
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-6) and rb["grad_norm"] == pytest.approx(
            ra["grad_norm"], abs=1e-6
        )
    assert all(r["grad_norm"] > 0 for r in a)  # the adapters get gradients


def test_lora_merge_gives_the_adapter_models_output(shards: Path, lora_base: Path, tmp_path: Path) -> None:
    from vdiff.runs import load_trained_weights
    from vdiff.sampling import load_run
    from vdiff.training import apply_lora, base_model

    base_dir = lora_base
    merged_dir = tmp_path / "merged"
    overrides = (
        *LORA,
        "train.steps=3",
        "optim.lr=0.01",
        f"init_from={base_dir}",
        f"lora.merge_to={merged_dir}",
    )
    cfg = tiny_config(shards, tmp_path / "run", *overrides)
    run = train(cfg)
    assert main(["--merge-lora", str(run), str(tmp_path / "raw"), "--weights", "model"]) == 0

    g = torch.Generator().manual_seed(0)
    x, t, ctx = (
        torch.randn(2, 48, 2, 4, 4, generator=g),
        torch.tensor([100.0, 700.0]),
        torch.randn(2, 8, 384, generator=g),
    )
    base = load_model(base_dir)
    for folder, weights in ((merged_dir, "ema"), (tmp_path / "raw", "model")):
        adapted = apply_lora(base_model(cfg), cfg.lora).eval()
        load_trained_weights(adapted, run / "checkpoints" / "step_00000003", weights=weights)
        merged = load_model(folder)
        assert {n for n, _ in merged.named_parameters()} == {n for n, _ in base.named_parameters()}
        with torch.no_grad():
            want, got = adapted(x, t, ctx), merged(x, t, ctx)
            # NOTE: fp32; W x + s·B(A x) vs (W + s·B A) x differ only by rounding
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            assert (got - base(x, t, ctx)).abs().max() > 1e-4  # the adapters changed the model
            # vdiff sample --model RUN folds the adapters in itself (this was a DCP missing-key error)
            sampled = load_run(run, weights=weights, step=-1)[0]
            torch.testing.assert_close(sampled(x, t, ctx), want, atol=1e-5, rtol=0)


def test_missing_weights_and_other_architectures_stop_before_work(
    shards: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    args = [str(CONFIG), f"data.path={shards}", f"run_dir={run}", "train.device=cpu"]
    assert main([*args, f"init_from={tmp_path / 'nope'}"]) == 2
    assert f"no such weight folder: init_from={tmp_path / 'nope'};" in capsys.readouterr().err
    assert main([*args, "vae.kind=wan", f"vae.path={tmp_path / 'vae'}"]) == 2
    assert "vae.path=" in capsys.readouterr().err
    assert not run.exists()  # nothing was written
    torch.manual_seed(0)
    other = save_model(
        build_model(load_config(TrainConfig, CONFIG, ["model.num_layers=1"]).model), tmp_path / "m"
    )
    assert main([*args, f"init_from={other}"]) == 2
    assert "model.num_layers=2 (init_from has 1)" in capsys.readouterr().err
    assert main([*args, "lora.rank=4"]) == 2  # seeded init: zero, frozen head -> adapters cannot learn
    assert "without init_from" in capsys.readouterr().err


def test_wan_finetune_config_loads_and_names_its_missing_weights(tmp_path: Path, capsys) -> None:
    path = CONFIG.parent / "wan2.1-1.3b-finetune.yaml"
    cfg = load_config(TrainConfig, path)
    assert cfg.model == model_config("wan2.1-1.3b")
    assert (cfg.vae.kind, cfg.text.max_length, cfg.train.bf16) == ("wan", 512, True)
    assert (cfg.parallel.dp_shard, cfg.parallel.activation_checkpoint) == (-1, "full")
    run = tmp_path / "run"
    assert main([str(path), f"run_dir={run}", "train.device=cpu"]) == 2
    err = capsys.readouterr().err
    for key in ("init_from=PATH/TO/", "text.path=PATH/TO/", "vae.path=PATH/TO/"):
        assert key in err
    assert not run.exists()  # stopped before any work


@pytest.mark.slow
def test_kill_9_then_resume_auto_gives_the_uninterrupted_losses(shards: Path, tmp_path: Path) -> None:
    """The issue's check, as a user runs it: `vdiff train`, SIGKILL after a checkpoint, `resume=auto`."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = CONFIG.parents[1]
    args = [str(CONFIG), f"data.path={shards}", "data.num_frames=4", "data.height=16", "data.width=16",
            "text.max_length=8", "train.batch_size=2", "train.steps=8", "checkpoint.every=3",
            "train.log_every=1", "train.device=cpu", "train.progress=false"]  # fmt: skip
    cmd = [sys.executable, "-m", "pipelines.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}

    def run(out: Path, *extra: str) -> None:
        argv = [*cmd, f"run_dir={out}", *extra]
        subprocess.run(argv, cwd=root, env=env, check=True, capture_output=True, timeout=300)

    run(tmp_path / "full")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, f"run_dir={killed}"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "step_00000003").is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpt = latest_checkpoint(killed / "checkpoints")
    assert ckpt is not None and ckpt.name >= "step_00000003"  # killed after a checkpoint was complete
    assert len(rows(killed)) < 8  # killed before the end
    run(killed, "resume=auto")
    a, b = rows(tmp_path / "full"), rows(killed)
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-6)


def test_ring_with_a_sparse_backend_is_refused_before_work(shards: Path, tmp_path: Path, capsys) -> None:
    # the ring's backward is dense: under a sparse forward it would train on another function's gradient
    args = [str(CONFIG), f"data.path={shards}", f"run_dir={tmp_path / 'r'}", "parallel.ring=2"]
    assert main([*args, "model.attention.backend=sparse"]) == 2
    assert "ring attention trains with dense attention only" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_branching_from_an_older_checkpoint_sets_the_later_run_aside(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The issue's case: resume=.../step_00000002 with a new lr, stopped, then resume=auto."""
    run = tmp_path / "run"
    common = ("optim.warmup_steps=0", "optim.schedule=constant", "train.tensorboard=false")
    train(tiny_config(shards, run, *common, "train.steps=6", "checkpoint.every=2", "optim.lr=0.001"))
    first = (run / "metrics.jsonl").read_text().splitlines()
    capsys.readouterr()
    # the branch: a new lr from step 2; it stops (as if killed) after its step-3 checkpoint
    branch = ("optim.lr=0.002", "checkpoint.every=3")
    resume = f"resume={run / 'checkpoints' / 'step_00000002'}"
    train(tiny_config(shards, run, *common, *branch, "train.steps=3", resume))
    assert "branching at step 2" in capsys.readouterr().out
    (aside,) = (run / "checkpoints").glob("abandoned-*")  # moved, not deleted, with the old config
    assert sorted(p.name for p in aside.iterdir()) == ["config.yaml", "step_00000004", "step_00000006"]
    assert load_config(TrainConfig, aside / "config.yaml").optim.lr == 0.001
    (sidecar,) = run.glob("metrics.abandoned-*.jsonl")
    assert sidecar.read_text().splitlines() == first[2:]  # the abandoned run's rows 3..6
    assert [r["step"] for r in rows(run)] == [1, 2, 3]
    # resume=auto continues the branch (step 3), not the abandoned run's step 6
    train(tiny_config(shards, run, *common, *branch, "train.steps=4"))
    got = rows(run)
    assert [(r["step"], r["lr"]) for r in got] == [(1, 0.001), (2, 0.001), (3, 0.002), (4, 0.002)]
    assert (run / "metrics.jsonl").read_text().splitlines()[:2] == first[:2]
    assert latest_checkpoint(run / "checkpoints") == run / "checkpoints" / "step_00000004"
    assert len(list((run / "checkpoints").glob("abandoned-*"))) == 1


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_complete_one(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    common = ("train.steps=4", "checkpoint.every=2", "train.tensorboard=false")
    full = train(tiny_config(shards, tmp_path / "full", *common))
    run = shutil.copytree(full, tmp_path / "run")
    (run / "checkpoints" / "step_00000004" / ".metadata").write_bytes(b"\x00not a checkpoint" * 4)
    capsys.readouterr()
    train(tiny_config(shards, run, *common))
    err = capsys.readouterr().err
    assert f"resume=auto passes over {run / 'checkpoints' / 'step_00000004'}: it does not load" in err
    (aside,) = (run / "checkpoints").glob("abandoned-*")
    assert (aside / "step_00000004" / ".metadata").read_bytes().startswith(b"\x00not a checkpoint")
    # resumed at step 2: the losses are the uninterrupted run's
    assert [(r["step"], r["loss"]) for r in rows(run)] == [(r["step"], r["loss"]) for r in rows(full)]
    # nothing loadable: an error that lists why, and nothing is moved
    bad = shutil.copytree(full, tmp_path / "bad")
    (bad / "checkpoints" / "step_00000004" / ".metadata").write_bytes(b"")
    (bad / "checkpoints" / "step_00000002" / "trainer" / "rank-00000.json").unlink()
    assert main([str(CONFIG), *tiny_overrides(shards, bad, *common)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "resume=auto: no checkpoint under" in err and "step_00000002: no trainer/rank-00000.json" in err
    assert "step_00000004: no .metadata, or an empty one" in err and "moved aside, not deleted" in err
    assert sorted(p.name for p in (bad / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=0", "train.steps must be >= 1, got 0"),
        ("train.steps=-5", "train.steps must be >= 1, got -5"),
        ("train.log_every=0", "train.log_every must be >= 1, got 0"),
        ("checkpoint.every=-1", "checkpoint.every must be >= 0 (0: only at the end), got -1"),
        ("train.batch_size=-4", "train.batch_size must be >= 1, got -4"),
        ("optim.lr=.nan", "optim.lr: expected a finite number, got nan"),
        ("flow.caption_dropout=.inf", "flow.caption_dropout: expected a finite number, got inf"),
        ("ema.decay=2", "ema.decay must be in [0, 1], got 2.0"),
        ("data.on_error=ignore", "data.on_error: 'ignore' is not one of ['skip', 'raise']"),
    ],
)
def test_bad_values_are_refused_before_any_work(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture, override: str, message: str
) -> None:
    run = tmp_path / "run"
    assert main([str(CONFIG), *tiny_overrides(shards, run, override)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1  # one line
    assert not run.exists()


def test_wrong_paths_are_one_line_user_errors_and_a_full_disk_names_its_path(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    a_file, not_a_tar = tmp_path / "file", tmp_path / "shard.tar"
    a_file.write_text("x")
    not_a_tar.write_bytes(b"\x00not a tar" * 100)
    run = tmp_path / "run"
    cases = [
        (f"run_dir={a_file}", f"run_dir={a_file} is a file, not a folder"),
        (f"data.path={tmp_path / 'none'}", f"data path {tmp_path / 'none'} does not exist"),
        (f"data.path={not_a_tar}", f"{not_a_tar}: not a readable uncompressed tar shard"),
        (f"resume={tmp_path / 'nope'}", f"resume={tmp_path / 'nope'}: no such folder"),
    ]
    for override, message in cases:
        assert main([str(CONFIG), *tiny_overrides(shards, run, override)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not run.exists()

    def disk_full(cfg: object, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("pipelines.train.save_config", disk_full)
    assert main([str(CONFIG), *tiny_overrides(shards, run)]) == 1  # the environment's failure
    err = capsys.readouterr().err  # NOTE: after transformers' progress bar of the text encoder's weights
    assert err.splitlines()[-1] == f"vdiff train: No space left on device: {run / 'config.yaml'}"
    # a config file named like an override is the config, not an override
    monkeypatch.chdir(tmp_path)
    shutil.copy(CONFIG, tmp_path / "take=2.yaml")
    assert main(["take=2.yaml", *tiny_overrides(shards, run, "train.steps=0")]) == 2
    assert "train.steps must be >= 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shards_with_a_bad_clip(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 4 clips of ``shards`` after a shard (first in order) whose one clip is not a video."""
    root = tmp_path_factory.mktemp("bad_clip")
    shutil.copytree(shards / "shards", root / "shards")
    meta = {"caption": "broken", "fps": 8.0, "num_frames": 12, "width": 24, "height": 24}
    with wds.TarWriter(str(root / "shards" / "a-bad.tar")) as w:
        w.write({"__key__": "clip-bad", "mp4": b"\x00not a video" * 10, "json": json.dumps(meta)})
    return root


def test_bad_clips_are_skipped_counted_listed_and_resumed_identically(
    shards_with_a_bad_clip: Path, tmp_path: Path
) -> None:
    # in shard order: clip-bad, clip-0..3; batches [0, 1], [2, 3] each epoch: clip-bad reads as clip-0
    common = ("train.steps=4", "checkpoint.every=2", "data.shuffle=false", "train.tensorboard=false")
    full = train(tiny_config(shards_with_a_bad_clip, tmp_path / "full", *common))
    assert [r["data_skipped"] for r in rows(full)] == [1, 1, 2, 2]
    listed = [json.loads(line) for line in (full / "bad_samples.jsonl").read_text().splitlines()]
    assert [(Path(r["shard"]).name, r["key"], r["epoch"]) for r in listed] == [("a-bad.tar", "clip-bad", 0)]
    assert "a-bad.tar:clip-bad.mp4: not a decodable video" in listed[0]["error"]
    cut = killed_after_step_3(full, tmp_path / "cut")
    (cut / "bad_samples.jsonl").unlink()  # the list comes back from the checkpoint, not from the file
    train(tiny_config(shards_with_a_bad_clip, cut, *common))
    assert [(r["loss"], r["data_skipped"]) for r in rows(cut)] == [
        (r["loss"], r["data_skipped"]) for r in rows(full)
    ]
    assert (cut / "bad_samples.jsonl").read_text() == (full / "bad_samples.jsonl").read_text()
