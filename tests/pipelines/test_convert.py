"""The ``vdiff convert`` command: both directions, errors as exit code 2, ``python -m`` entry."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

from pipelines.convert import main
from vdiff.models import load_model, save_model, videodit_tiny


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
