"""The ``vdiff convert`` command: both directions, training runs (full and LoRA) out to diffusers and
vdiff folders checked against diffusers' own loaders, errors as exit code 2, ``python -m`` entry."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import webdataset as wds
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import load_file

from data_prep.synthetic import moving_shapes, shape_caption
from pipelines.convert import main
from pipelines.train import train
from vdiff.checkpoint import load_checkpoint
from vdiff.config import load_config
from vdiff.io.video import encode_mp4
from vdiff.models import build_model, convert_checkpoint, load_model, save_model, videodit_tiny
from vdiff.optim import build_optimizer
from vdiff.training import TrainConfig, apply_lora


def test_convert_both_directions(tmp_path, capsys):
    model = videodit_tiny()
    save_model(model, tmp_path / "v")
    assert main(["--to", "diffusers", str(tmp_path / "v"), str(tmp_path / "d")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "diffusers" and summary["tensors"] == len(model.state_dict())
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["_class_name"] == "WanTransformer3DModel" and cfg["num_attention_heads"] == 2
    assert main(["wan", str(tmp_path / "d"), str(tmp_path / "v2"), "--dtype", "bfloat16"]) == 0
    state = load_file(str(tmp_path / "v2" / "model.safetensors"))
    ref = model.state_dict()
    assert all(torch.equal(state[k], ref[k].bfloat16()) for k in ref)
    assert load_model(tmp_path / "v2").embed.patch.weight.dtype == torch.bfloat16


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["wan", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    save_model(videodit_tiny(), tmp_path / "v")
    assert main(["--to", "diffusers", str(tmp_path / "v"), str(tmp_path / "d")]) == 0
    assert main(["--to", "diffusers", str(tmp_path / "v"), str(tmp_path / "d")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--to", "diffusers", "--overwrite", str(tmp_path / "v"), str(tmp_path / "d")]) == 0


def test_python_dash_m_help():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.convert", "--help"], capture_output=True, text=True, check=True
    )
    assert "vdiff convert" in out.stdout and "--to" in out.stdout


# ----------------------------------------------------------------------------- training runs

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
LORA = ("lora.rank=4", "lora.alpha=8")
ATOL = 1e-5  # fp32 on CPU: the same maths in another order (diffusers' Wan vs vdiff's VideoDiT)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two captioned moving-shape clips (8 frames, 16x16) in one WebDataset shard."""
    root = tmp_path_factory.mktemp("clips")
    with wds.TarWriter(str(root / "shard-000000.tar")) as w:
        for i, (color, shape, direction) in enumerate((("red", "circle", "left"), ("blue", "square", "up"))):
            frames = moving_shapes(
                color, shape, direction, num_frames=8, height=16, width=16, fps=8.0, seed=i
            )
            meta = {"caption": shape_caption(color, shape, direction), "fps": 8.0, "num_frames": 8,
                    "width": 16, "height": 16}  # fmt: skip
            w.write({"__key__": f"clip-{i}", "mp4": encode_mp4(frames, 8.0), "json": json.dumps(meta)})
    return root


def run_config(data: Path, run: Path, *overrides: str) -> TrainConfig:
    """configs/tiny.yaml at 4 frames of 16x16, 4 steps of batch 2, checkpoints at steps 2 and 4."""
    base = [
        f"data.path={data}",
        f"run_dir={run}",
        "data.num_frames=4",
        "data.height=16",
        "data.width=16",
        "text.max_length=8",
        "train.batch_size=2",
        "train.steps=4",
        "train.device=cpu",
        "train.progress=false",
        "train.tensorboard=false",
        "checkpoint.every=2",
        "optim.lr=0.01",
        "optim.warmup_steps=0",
    ]
    return load_config(TrainConfig, CONFIG, [*base, *overrides])


@pytest.fixture(scope="module")
def full_run(clips: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full fine-tune of the tiny model (EMA kept), checkpoints step_00000002 and step_00000004."""
    return train(run_config(clips, tmp_path_factory.mktemp("full") / "run"))


@pytest.fixture(scope="module")
def lora_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder standing in for a trained base: random weights, a non-zero output head."""
    torch.manual_seed(123)
    model = build_model(load_config(TrainConfig, CONFIG).model)
    torch.nn.init.normal_(model.unembed.proj.weight, std=0.05)
    return save_model(model, tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="module")
def lora_run(clips: Path, lora_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA run (rank 4, alpha 8) on ``lora_base``: its checkpoints hold only the adapters."""
    return train(run_config(clips, tmp_path_factory.mktemp("lora") / "run", *LORA, f"init_from={lora_base}"))


def reference(run: Path, step: int, weights: str) -> torch.nn.Module:
    """The run's model at ``step`` as training holds it (LoRA layers unmerged), read with load_checkpoint."""
    cfg = load_config(TrainConfig, run / "config.yaml")
    torch.manual_seed(cfg.seed)
    model = load_model(cfg.init_from) if cfg.init_from else build_model(cfg.model)
    lora = cfg.lora.rank > 0
    if lora:
        model = apply_lora(model, cfg.lora)
    ema = copy.deepcopy(model)
    load_checkpoint(
        run / "checkpoints" / f"step_{step:08d}",
        model=model,
        optimizer=build_optimizer(model, cfg.optim),
        ema=ema,
        trainable_only=lora,
    )
    return (ema if weights == "ema" else model).eval()


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents (B, C, T, H, W), timesteps (B,) and text embeddings (B, L, D) for the tiny model."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 48, 2, 4, 6, generator=g)
    return x, torch.tensor([100.0, 700.0]), torch.randn(2, 8, 384, generator=g)


def outputs(model: torch.nn.Module) -> torch.Tensor:
    x, t, ctx = inputs()
    with torch.no_grad():
        if isinstance(model, WanTransformer3DModel):
            return model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
        return model(x, t, ctx)


def test_a_full_run_exports_to_diffusers_and_vdiff(full_run: Path, tmp_path: Path, capsys) -> None:
    # (export args, reference step, reference weights): default = latest checkpoint, EMA
    cases = [([], 4, "ema"), (["--weights", "model"], 4, "model"), (["--step", "2"], 2, "ema")]
    for i, (extra, step, weights) in enumerate(cases):
        want = outputs(reference(full_run, step, weights))
        out = tmp_path / f"d{i}"
        assert main(["--to", "diffusers", *extra, str(full_run), str(out)]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert (summary["format"], summary["step"], summary["weights"]) == ("diffusers", step, weights)
        assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
        got = outputs(WanTransformer3DModel.from_pretrained(out).eval())
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # the three exports are three different models (EMA vs raw weights, step 2 vs 4)
    a, b, c = (outputs(WanTransformer3DModel.from_pretrained(tmp_path / f"d{i}")) for i in range(3))
    assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3

    assert main([str(full_run), str(tmp_path / "v"), "--weights", "model", "--step", "2"]) == 0
    exported, ref = load_model(tmp_path / "v"), reference(full_run, 2, "model")
    assert exported.config == ref.config
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_a_lora_run_exports_merged_and_as_diffusers_adapters(
    lora_run: Path, lora_base: Path, tmp_path: Path, capsys
) -> None:
    for weights in ("ema", "model"):
        adapted = reference(lora_run, 4, weights)  # base + unmerged peft adapters
        want = outputs(adapted)
        assert (want - outputs(load_model(lora_base))).abs().max() > 1e-4  # the adapters changed the model

        merged = tmp_path / f"merged-{weights}"
        assert main(["--to", "diffusers", "--weights", weights, str(lora_run), str(merged)]) == 0
        assert json.loads(capsys.readouterr().out)["lora"] == "merged"
        got = outputs(WanTransformer3DModel.from_pretrained(merged).eval())
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)

        # adapters alone: what diffusers' WanPipeline.load_lora_weights reads, on the base in diffusers form
        adapters = tmp_path / f"adapters-{weights}"
        args = ["--to", "diffusers", "--lora-adapters", "--weights", weights, str(lora_run), str(adapters)]
        assert main(args) == 0
        summary = json.loads(capsys.readouterr().out)
        assert (
            summary["format"] == "diffusers-lora" and summary["tensors"] == 2 * 10 * 2
        )  # blocks x targets x A,B
        assert [p.name for p in adapters.iterdir()] == ["pytorch_lora_weights.safetensors"]
        base = tmp_path / f"base-{weights}"
        convert_checkpoint(lora_base, base, to="diffusers")
        pipe = WanPipeline(
            tokenizer=None,
            text_encoder=None,
            vae=None,
            scheduler=None,
            transformer=WanTransformer3DModel.from_pretrained(base).eval(),
        )
        pipe.load_lora_weights(str(adapters))
        got = outputs(pipe.transformer)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_lora_adapters_export_without_the_base(lora_run: Path, tmp_path: Path, capsys) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(lora_run, moved)
    cfg = load_config(TrainConfig, moved / "config.yaml")
    text = (moved / "config.yaml").read_text().replace(cfg.init_from, str(tmp_path / "gone"))
    (moved / "config.yaml").write_text(text)
    # merging needs the base: one line naming the init_from that is gone
    assert main(["--to", "diffusers", str(moved), str(tmp_path / "merged")]) == 2
    assert f"init_from={tmp_path / 'gone'} does not exist" in capsys.readouterr().err
    # the adapters alone do not: the same file as with the base in place
    for run, out in ((lora_run, tmp_path / "a"), (moved, tmp_path / "b")):
        assert main(["--to", "diffusers", "--lora-adapters", str(run), str(out)]) == 0
    a, b = (load_file(str(tmp_path / d / "pytorch_lora_weights.safetensors")) for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_export_errors_exit_2_naming_the_path(
    full_run: Path, lora_run: Path, tmp_path: Path, capsys
) -> None:
    def fails(*args: str) -> str:
        assert main(list(args)) == 2
        err = capsys.readouterr().err
        assert err.startswith("vdiff convert: ") and err.count("\n") == 1
        return err

    out = str(tmp_path / "out")
    assert str(tmp_path / "nope") in fails("--to", "diffusers", str(tmp_path / "nope"), out)
    # a run with no complete checkpoint (one interrupted at its first save)
    empty = tmp_path / "empty"
    (empty / "checkpoints" / "step_00000002.tmp").mkdir(parents=True)
    shutil.copy(full_run / "config.yaml", empty / "config.yaml")
    assert f"{empty / 'checkpoints'} holds no complete checkpoint" in fails(str(empty), out)
    err = fails("--step", "3", str(full_run), out)
    assert str(full_run / "checkpoints" / "step_00000003") in err and "steps in" in err and ": 2, 4" in err
    err = fails("--to", "diffusers", "--lora-adapters", str(full_run), out)
    assert f"{full_run} is a full fine-tune" in err
    assert "--to diffusers" in fails("--lora-adapters", str(lora_run), out)
    no_ema = tmp_path / "no_ema"
    shutil.copytree(full_run, no_ema)
    cfg = (no_ema / "config.yaml").read_text()
    (no_ema / "config.yaml").write_text(cfg.replace("ema:\n  enabled: true", "ema:\n  enabled: false"))
    assert f"{no_ema} trained with ema.enabled=false" in fails("--weights", "ema", str(no_ema), out)
    assert "--step N" in fails(str(full_run / "checkpoints" / "step_00000002"), out)
    save_model(videodit_tiny(), tmp_path / "model")
    assert "--step apply to a training run" in fails("--step", "2", str(tmp_path / "model"), out)
    assert not (tmp_path / "out").exists()  # nothing was written
    assert main([str(full_run), out]) == 0
    assert "--overwrite" in fails(str(full_run), out)
