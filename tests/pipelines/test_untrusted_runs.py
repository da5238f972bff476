"""Every command that loads a training run refuses a crafted checkpoint without running its code.

``vdiff sample --model RUN``, ``vdiff train`` resuming RUN, ``vdiff train --merge-lora RUN`` and
``vdiff convert RUN OUT`` all read RUN's DCP checkpoints. Each test writes a genuine run, checks
that it loads, alters one file (``.metadata``, or a non-tensor entry's bytes) so that a plain read
would create a marker file, and checks that the command exits 2 with a line naming the file, and
that the marker is absent.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
import webdataset as wds
from safetensors.torch import save, save_file

from vdiff.checkpoint import latest_checkpoint, save_checkpoint
from vdiff.config import load_config, save_config
from vdiff.models import build_model, save_model
from vdiff.runs import merge_run
from vdiff.training import TrainConfig, apply_lora, base_model

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.vdiff.checkpoint.conftest import craft_entry, craft_metadata, genuine_metadata  # noqa: E402

CONFIG = ROOT / "configs" / "tiny.yaml"
SMALL = ["model.in_channels=4", "model.out_channels=4", "model.text_dim=32", "model.num_layers=1"]


def _config(run: Path, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, CONFIG, [f"run_dir={run}", "train.device=cpu", *SMALL, *overrides])


def _write_run(run: Path, cfg: TrainConfig, model: torch.nn.Module) -> Path:
    """A run folder as training leaves it: config.yaml and checkpoints/step_00000002 (with EMA)."""
    save_config(cfg, run / "config.yaml")
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    lora = cfg.lora.rank > 0
    ema = copy.deepcopy(model)
    return save_checkpoint(
        run / "checkpoints", step=2, model=model, optimizer=opt, ema=ema, trainable_only=lora
    )


@pytest.fixture
def plain_run(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    run = tmp_path / "run"
    cfg = _config(run)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    _write_run(run, cfg, model)
    return run, model


@pytest.fixture
def lora_run(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    base = build_model(_config(tmp_path).model)
    torch.nn.init.normal_(base.unembed.proj.weight, std=0.05)
    base_dir = save_model(base, tmp_path / "base")
    run = tmp_path / "lora_run"
    cfg = _config(run, "lora.rank=4", "lora.alpha=8", f"init_from={base_dir}")
    _write_run(run, cfg, apply_lora(base_model(cfg), cfg.lora))
    return run


def _refused(capsys: pytest.CaptureFixture, rc: int, marker: Path, names: Path) -> str:
    """The command's error line, after checking that the code did not run and the line names the file."""
    assert not marker.exists()  # was created: the file's code ran
    err = capsys.readouterr().err.strip()
    assert rc == 2 and str(names) in err.splitlines()[-1], err
    return err.splitlines()[-1]


def test_sample_refuses_a_run_whose_checkpoint_runs_code(
    plain_run: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipelines.sample import main
    from vdiff.sampling import load_run

    run, model = plain_run
    loaded = load_run(run, weights="ema", step=-1)[0]  # the genuine run loads
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    marker = tmp_path / "MARKER"
    metadata = craft_metadata(latest_checkpoint(run / "checkpoints"), marker)
    rc = main(["--model", str(run), "--prompt", "a cat", "--out", str(tmp_path / "out"), "device=cpu"])
    assert "asks to load builtins.exec" in _refused(capsys, rc, marker, metadata)


def test_sample_refuses_a_weight_entry_whose_bytes_run_code(
    plain_run: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    from vdiff.sampling import load_run

    run, _ = plain_run
    marker, ckpt = tmp_path / "MARKER", latest_checkpoint(run / "checkpoints")
    craft_entry(ckpt, "ema.unembed.proj.weight", marker)
    with pytest.raises(ValueError, match=r"entry ema\.unembed\.proj\.weight asks to load exec"):
        load_run(run, weights="ema", step=-1)
    assert not marker.exists()


def test_merge_lora_refuses_a_run_whose_checkpoint_runs_code(
    lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipelines.train import main

    merge_run(lora_run, tmp_path / "genuine")  # the genuine run merges
    marker = tmp_path / "MARKER"
    metadata = craft_metadata(latest_checkpoint(lora_run / "checkpoints"), marker)
    rc = main(["--merge-lora", str(lora_run), str(tmp_path / "merged")])
    assert "asks to load builtins.exec" in _refused(capsys, rc, marker, metadata)
    assert not (tmp_path / "merged").exists()


def test_merge_lora_refuses_an_adapter_entry_whose_bytes_run_code(lora_run: Path, tmp_path: Path) -> None:
    marker, ckpt = tmp_path / "MARKER", latest_checkpoint(lora_run / "checkpoints")
    key = next(
        k for k in genuine_metadata(ckpt).state_dict_metadata if k.startswith("ema.") and ".lora_A." in k
    )
    craft_entry(ckpt, key, marker)
    with pytest.raises(ValueError, match=rf"entry {key} asks to load exec"):
        merge_run(lora_run, tmp_path / "merged")
    assert not marker.exists()


@pytest.mark.parametrize("to", ["vdiff", "diffusers"])
def test_convert_refuses_a_run_whose_checkpoint_runs_code(
    plain_run: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture, to: str
) -> None:
    from pipelines.convert import main

    run, _ = plain_run
    marker = tmp_path / "MARKER"
    metadata = craft_metadata(latest_checkpoint(run / "checkpoints"), marker)
    rc = main(["--to", to, str(run), str(tmp_path / "out")])
    assert "asks to load builtins.exec" in _refused(capsys, rc, marker, metadata)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def cached(tmp_path: Path) -> Path:
    """4 cached samples: latents (4, 2, 4, 4) -> 8 tokens, text context (5, 32), and the empty prompt."""
    root = tmp_path / "cached"
    (root / "shards").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    with wds.TarWriter(str(root / "shards" / "shard-000000.tar")) as w:
        for i in range(4):
            payload = save({"latents": torch.randn(4, 2, 4, 4, generator=g), "context": torch.randn(5, 32)})
            w.write({"__key__": f"s{i}", "safetensors": payload, "json": json.dumps({"caption": f"c{i}"})})
    save_file({"context": torch.zeros(5, 32)}, str(root / "empty_prompt.safetensors"))
    return root


def test_train_refuses_to_resume_from_a_checkpoint_that_runs_code(
    cached: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipelines.train import main

    run = tmp_path / "run"
    args = [str(CONFIG), f"run_dir={run}", f"data.path={cached}", "train.device=cpu", *SMALL]
    args += [
        "train.batch_size=2",
        "checkpoint.every=1",
        "parallel.param_dtype=float32",
        "train.progress=false",
    ]
    assert main([*args, "train.steps=1"]) == 0
    marker, ckpt = tmp_path / "MARKER", run / "checkpoints" / "step_00000001"
    metadata = craft_metadata(ckpt, marker)
    capsys.readouterr()
    rc = main([*args, "train.steps=2", f"resume={ckpt}"])  # continue the (downloaded) run
    assert "asks to load builtins.exec" in _refused(capsys, rc, marker, metadata)
    assert latest_checkpoint(run / "checkpoints") == ckpt
