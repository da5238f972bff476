"""Wan2.1 parity: a random diffusers WanTransformer3DModel and its vdiff conversion agree.

Reference: diffusers' ``WanTransformer3DModel`` (the implementation real Wan2.1 checkpoints are
published for). Tolerance: max abs difference < 1e-5 in fp32; conversions are bit-exact.
"""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402

from vdiff.models import (  # noqa: E402
    build_model,
    convert_checkpoint,
    load_model,
    model_config,
    read_config,
)
from vdiff.models.wan import (  # noqa: E402
    config_from_diffusers,
    config_to_diffusers,
    diffusers_to_vdiff_key,
    vdiff_to_wan_key,
)

TINY_WAN = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=32,
    ffn_dim=32,
    num_layers=2,
    rope_max_seq_len=32,
)


@pytest.fixture(scope="module")
def wan() -> WanTransformer3DModel:
    torch.manual_seed(0)
    model = WanTransformer3DModel(**TINY_WAN)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # NOTE: every weight random and O(0.3) (LayerNorm affine, RMSNorm gains, biases too), so
        # a mapping error anywhere changes the output.
        for name, p in model.named_parameters():
            gain = 1.0 if ".norm" in name and name.endswith(".weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + gain)
    return model.eval()


@pytest.fixture(scope="module")
def wan_dir(wan, tmp_path_factory):
    path = tmp_path_factory.mktemp("wan") / "transformer"
    wan.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def wan_sharded_dir(wan, tmp_path_factory):
    path = tmp_path_factory.mktemp("wan_sharded")
    wan.save_pretrained(path, max_shard_size="20KB")
    return path


def _inputs(*, frames: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, frames, height, width, generator=g)
    t = torch.rand(2, generator=g) * 1000  # (B,) random floats in [0, 1000)
    c = torch.randn(2, 7, 16, generator=g)
    return x, t, c


def _max_diff(wan, model, *, frames=3, height=6, width=10, seed=0) -> float:
    x, t, c = _inputs(frames=frames, height=height, width=width, seed=seed)
    with torch.no_grad():
        ref = wan(x, t, c, return_dict=False)[0]
        out = model(x, t, c)
    assert out.shape == ref.shape == x.shape
    assert ref.abs().max() > 0.1  # non-trivial output
    return (out - ref).abs().max().item()


def _user_config(config) -> dict:
    items = dict(config).items()
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in items if not k.startswith("_")}


def test_parity_fp32_in_memory(wan):
    model = build_model(config_from_diffusers(dict(wan.config)))
    model.load_state_dict({diffusers_to_vdiff_key(k): v for k, v in wan.state_dict().items()}, strict=True)
    model.eval()
    assert _max_diff(wan, model) < 1e-5
    assert _max_diff(wan, model, frames=5, height=4, width=8, seed=1) < 1e-5


def test_gradients_match_diffusers(wan):
    model = build_model(config_from_diffusers(dict(wan.config)))
    model.load_state_dict({diffusers_to_vdiff_key(k): v for k, v in wan.state_dict().items()}, strict=True)
    x, t, c = _inputs(frames=2, height=4, width=6, seed=3)
    wan.zero_grad()
    wan(x, t, c, return_dict=False)[0].square().mean().backward()
    model(x, t, c).square().mean().backward()
    ours = dict(model.named_parameters())
    for name, p in wan.named_parameters():
        mine = ours[diffusers_to_vdiff_key(name)].grad
        torch.testing.assert_close(mine, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    wan.zero_grad()


def test_load_model_from_diffusers_dir(wan, wan_dir):
    assert read_config(wan_dir)[1] == "diffusers"
    assert _max_diff(wan, load_model(wan_dir)) < 1e-5
    # a pipeline folder: the transformer/ subfolder is found
    assert _max_diff(wan, load_model(wan_dir.parent), frames=2, seed=2) < 1e-5


def test_load_model_from_sharded_diffusers_dir(wan, wan_sharded_dir):
    index = json.loads((wan_sharded_dir / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert _max_diff(wan, load_model(wan_sharded_dir)) < 1e-5


@pytest.mark.parametrize("source", ["wan_dir", "wan_sharded_dir"])
def test_round_trip_is_bit_exact(wan, source, request, tmp_path):
    src = request.getfixturevalue(source)
    vd, back = tmp_path / "vdiff", tmp_path / "back"
    summary = convert_checkpoint(src, vd, to="vdiff")
    assert read_config(vd)[1] == "vdiff"
    # streamed: one output shard per input shard, never the whole model in one file
    assert summary["files"] == len(list(src.glob("*.safetensors"))) == len(list(vd.glob("*.safetensors")))
    assert _max_diff(wan, load_model(vd)) < 1e-5
    convert_checkpoint(vd, back, to="diffusers")
    again = WanTransformer3DModel.from_pretrained(back)
    ref, out = wan.state_dict(), again.state_dict()
    assert ref.keys() == out.keys()
    for k in ref:
        assert torch.equal(ref[k], out[k]), k
    assert _user_config(again.config) == _user_config(wan.config)


@pytest.mark.parametrize("name", ["wan2.1-1.3b", "wan2.1-14b"])
def test_published_configs_map_every_weight(name):
    cfg = model_config(name)
    d = json.loads(json.dumps(config_to_diffusers(cfg)))
    with torch.device("meta"):
        ref = WanTransformer3DModel(**{k: v for k, v in d.items() if not k.startswith("_")})
    ref_shapes = {diffusers_to_vdiff_key(k): tuple(v.shape) for k, v in ref.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in build_model(cfg, device="meta").state_dict().items()}
    assert ref_shapes == ours
    assert config_from_diffusers(d) == cfg


def test_image_to_video_config_is_rejected():
    with pytest.raises(ValueError, match="image-to-video"):
        config_from_diffusers({**TINY_WAN, "_class_name": "WanTransformer3DModel", "image_dim": 1280})


def _original_wan_state(wan) -> dict[str, torch.Tensor]:
    return {vdiff_to_wan_key(diffusers_to_vdiff_key(k)): v.clone() for k, v in wan.state_dict().items()}


def test_original_wan_names_match_diffusers_single_file_converter(wan):
    # Reference: diffusers' own converter from the original Wan repository's layout.
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    ref = wan.state_dict()
    converted = convert_wan_transformer_to_diffusers(_original_wan_state(wan))
    assert converted.keys() == ref.keys()
    assert all(torch.equal(converted[k], ref[k]) for k in ref)


def test_load_and_convert_original_wan_folder(wan, tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "Wan2.1-T2V-tiny"
    src.mkdir()
    config = {"_class_name": "WanModel", "model_type": "t2v", "dim": 24, "num_heads": 2, "ffn_dim": 32}
    config.update(num_layers=2, in_dim=4, out_dim=4, text_dim=16, freq_dim=32, eps=1e-6, text_len=512)
    (src / "config.json").write_text(json.dumps(config))
    save_file(_original_wan_state(wan), str(src / "diffusion_pytorch_model.safetensors"))
    assert read_config(src)[1] == "wan"
    assert _max_diff(wan, load_model(src)) < 1e-5
    convert_checkpoint(src, tmp_path / "d", to="diffusers")
    again = WanTransformer3DModel.from_pretrained(tmp_path / "d").state_dict()
    ref = wan.state_dict()
    assert all(torch.equal(again[k], ref[k]) for k in ref)
    (src / "config.json").write_text(json.dumps({**config, "model_type": "i2v"}))
    with pytest.raises(ValueError, match="text-to-video"):
        load_model(src)


def test_a_model_with_absolute_positions_does_not_convert_to_diffusers():
    cfg = model_config("tiny")
    cfg.abs_pos_embed = True
    with pytest.raises(ValueError, match="abs_pos_embed"):
        config_to_diffusers(cfg)
