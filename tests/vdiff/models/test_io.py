"""save_model / load_model on vdiff folders, and clear errors for broken folders."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from vdiff.attention import AttentionConfig
from vdiff.models import convert_checkpoint, load_model, read_config, save_model


def _state(path):
    return load_file(str(path / "model.safetensors"))


def test_save_load_round_trip(tiny, inputs, tmp_path):
    save_model(tiny, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "m")
    assert not loaded.training and loaded.config == tiny.config
    for k, v in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), tiny(*inputs))


def test_attention_config_is_saved(tiny, tmp_path):
    tiny.set_attention(AttentionConfig(per_layer={1: "sdpa"}, options={}))
    save_model(tiny, tmp_path)
    assert load_model(tmp_path).config.attention == AttentionConfig(per_layer={1: "sdpa"})


def test_load_with_dtype_and_attention_override(tiny, tmp_path):
    save_model(tiny, tmp_path)
    model = load_model(tmp_path, dtype=torch.bfloat16, attention=AttentionConfig(per_layer={1: "sdpa"}))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config.attention.per_layer == {1: "sdpa"}


def test_missing_unexpected_and_mismatched_weights_are_named(tiny, tmp_path):
    save_model(tiny, tmp_path)
    state = _state(tmp_path)
    state.pop("blocks.1.ffn.fc2.bias")
    state["blocks.0.self_attn.q.weight"] = torch.zeros(3, 3)
    state["blocks.9.self_attn.q.weight"] = torch.zeros(32, 32)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as e:
        load_model(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "missing weights: blocks.1.ffn.fc2.bias" in msg
    assert "unexpected weights: blocks.9.self_attn.q.weight (model.safetensors)" in msg
    assert "blocks.0.self_attn.q.weight (model.safetensors: (3, 3), model: (32, 32))" in msg


def test_unknown_diffusers_weight_is_named(tiny, tmp_path):
    save_model(tiny, tmp_path / "v")
    convert_checkpoint(tmp_path / "v", tmp_path / "d", to="diffusers")
    f = tmp_path / "d" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(f))
    state["blocks.0.attn1.add_k_proj.weight"] = torch.zeros(1)
    save_file(state, str(f))
    with pytest.raises(ValueError, match=r"model\.safetensors: weight 'blocks\.0\.attn1\.add_k_proj"):
        load_model(tmp_path / "d")


def test_bad_folders_are_clear_errors(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="neither a vdiff model config"):
        read_config(tmp_path)
    save_model(tiny, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no model\.safetensors"):
        load_model(tmp_path)
    torch.save({}, tmp_path / "model.bin")
    with pytest.raises(ValueError, match="safetensors only"):
        load_model(tmp_path)


def test_vdiff_diffusers_vdiff_is_bit_exact(tiny, tmp_path):
    save_model(tiny, tmp_path / "a")
    convert_checkpoint(tmp_path / "a", tmp_path / "d", to="diffusers")
    assert read_config(tmp_path / "d") == (tiny.config, "diffusers")
    convert_checkpoint(tmp_path / "d", tmp_path / "b", to="vdiff")
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileExistsError, match="already exists"):
        convert_checkpoint(tmp_path / "d", tmp_path / "b", to="vdiff")
    with pytest.raises(ValueError, match="already a vdiff model folder"):
        convert_checkpoint(tmp_path / "a", tmp_path / "c", to="vdiff")


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=oct)
def test_model_folders_honour_the_umask(tiny, tmp_path, umask):
    old = os.umask(umask)
    try:
        save_model(tiny, tmp_path / "v")
        convert_checkpoint(tmp_path / "v", tmp_path / "d", to="diffusers")
    finally:
        os.umask(old)
    for folder in ("v", "d"):
        assert stat.S_IMODE((tmp_path / folder).stat().st_mode) == 0o777 & ~umask
        for p in (tmp_path / folder).iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p.name


def test_save_model_as_diffusers_loads_with_from_pretrained(tiny, inputs, tmp_path):
    from diffusers import WanTransformer3DModel

    save_model(tiny, tmp_path / "d", to="diffusers")
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert names == ["config.json", "diffusion_pytorch_model.safetensors"]
    x, t, c = inputs
    with torch.no_grad():
        got = WanTransformer3DModel.from_pretrained(tmp_path / "d")(x, t, c, return_dict=False)[0]
        torch.testing.assert_close(got, tiny(x, t, c), atol=1e-5, rtol=0)
    save_model(tiny, tmp_path / "b", to="diffusers", dtype=torch.bfloat16)
    state = load_file(str(tmp_path / "b" / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    assert torch.equal(state["blocks.0.attn1.to_q.weight"], tiny.blocks[0].self_attn.q.weight.bfloat16())


def test_save_model_as_diffusers_refuses_what_diffusers_cannot_describe(tmp_path):
    from tests.vdiff.models.conftest import INIT_DICT
    from vdiff.models import ModelConfig, build_model

    model = build_model(ModelConfig(**INIT_DICT, abs_pos_embed=True))
    with pytest.raises(ValueError, match="abs_pos_embed"):
        save_model(model, tmp_path / "d", to="diffusers")
    assert not (tmp_path / "d").exists()  # refused before anything was written
