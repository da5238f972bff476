"""Shared model checks (diffusers-style) on the tiny VideoDiT, plus the structure contract."""

from __future__ import annotations

import math

import pytest
import torch

from vdiff.attention import AttentionConfig, register_backend
from vdiff.attention.token_order import tile_order
from vdiff.models import (
    ModelConfig,
    build_model,
    model_config,
    videodit_demo,
    videodit_tiny,
    videodit_wan21_1_3b,
    videodit_wan21_14b,
)
from vdiff.models.layers import absolute_position_table, apply_rope, rope_table, timestep_features

CALLS: list[tuple[str, int | None, int]] = []


@register_backend("_test_recording")
def _recording(q, k, v, *, scale, return_lse=False, tag="rec", layer_index=None):
    """Naive softmax attention that records each call (test-only backend)."""
    CALLS.append((tag, layer_index, q.shape[2]))
    p = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)  # (B, H, Nq, Nk)
    return p @ v  # (B, H, Nq, D)


def test_output_shape_and_dtype(tiny, inputs):
    x, t, c = inputs
    out = tiny(x, t, c)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()


def test_deterministic(tiny, inputs):
    with torch.no_grad():
        a, b = tiny(*inputs), tiny(*inputs)
    assert torch.equal(a, b)


def test_gradients_reach_every_parameter(tiny, inputs):
    tiny.train()
    tiny(*inputs).square().mean().backward()
    for name, p in tiny.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"


def test_batch_independence(tiny, make_inputs):
    x, t, c = make_inputs(batch=3)
    with torch.no_grad():
        full = tiny(x, t, c)
        one = tiny(x[1:2], t[1:2], c[1:2])
    torch.testing.assert_close(full[1:2], one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", [(1, 2, 2), (4, 4, 6), (2, 8, 4)])
def test_grids(tiny, make_inputs, grid):
    x, t, c = make_inputs(frames=grid[0], height=grid[1], width=grid[2], text_len=3)
    assert tiny(x, t, c).shape == x.shape


def test_bf16_forward_close_to_fp32(tiny, inputs):
    with torch.no_grad():
        ref = tiny(*inputs)
        x, t, c = inputs
        out = tiny.to(torch.bfloat16)(x.bfloat16(), t, c.bfloat16())
        # fp32 latents and text embeddings follow the weights' dtype
        assert torch.equal(tiny(x, t, c), out)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    # NOTE: bf16 keeps ~3 significant digits; the error relative to the output scale stays small.
    assert (out.float() - ref).abs().max() / ref.abs().max() < 0.1


@pytest.mark.parametrize("order", ["raster", "tiles"])
def test_composition_equals_forward(tiny, inputs, order):
    tiny.set_attention(AttentionConfig(token_order=order, tile=2))
    x, t, c = inputs
    with torch.no_grad():
        e = tiny.embed(x, t, c)
        tokens = e.tokens
        for block in tiny.blocks:
            tokens = block(tokens, context=e.context, temb_mod=e.temb_mod, rope=e.rope)
        pieces = tiny.unembed(tokens, e.temb, e.grid, e.order)
        assert torch.equal(pieces, tiny(x, t, c))
        assert (e.order is None) == (order == "raster")
        if order == "tiles":  # without the order, unembed would unpatchify tile-ordered tokens as raster
            assert not torch.allclose(tiny.unembed(tokens, e.temb, e.grid), pieces)
    n = math.prod(e.grid)
    assert e.grid == (3, 3, 5)
    assert e.tokens.shape == (2, n, 32) and e.rope.shape == (n, 8, 2)
    assert e.context.shape == (2, 5, 32) and e.temb.shape == (2, 32) and e.temb_mod.shape == (2, 6, 32)


def test_attention_op_swap_hook(tiny, inputs):
    with torch.no_grad():
        ref = tiny(*inputs)
        seen = []
        for m in tiny.self_attentions():

            def op(q, k, v, *, _i=m.layer_index):
                seen.append((_i, tuple(q.shape)))
                return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v  # (B, H, N, D)

            m.attn_op = op
        out = tiny(*inputs)
        assert seen == [(0, (2, 2, 45, 16)), (1, (2, 2, 45, 16))]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        for m in tiny.self_attentions():
            m.attn_op = lambda q, k, v: torch.zeros_like(q)
        assert not torch.allclose(tiny(*inputs), ref)


def test_per_layer_backend_from_config(randomize, inputs):
    cfg = model_config("tiny", attention=AttentionConfig(backend="_test_recording", per_layer={1: "sdpa"}))
    model = randomize(build_model(cfg)).eval()
    CALLS.clear()
    with torch.no_grad():
        out = model(*inputs)
    assert CALLS == [("rec", 0, 45)]  # layer 0 only; layer 1 uses sdpa
    model.set_attention(AttentionConfig(backend="sdpa"))
    with torch.no_grad():
        ref = model(*inputs)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    model.set_attention(AttentionConfig(backend="_test_recording", options={"tag": "opt"}))
    CALLS.clear()
    with torch.no_grad():
        model(*inputs)
    assert CALLS == [("opt", 0, 45), ("opt", 1, 45)]  # layer_index passed to backends taking it


def test_bad_configs_and_inputs_are_clear_errors(tiny):
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        build_model(model_config("tiny", attention=AttentionConfig(backend="nope")))
    with pytest.raises(ValueError, match="head_dim"):
        build_model(model_config("tiny", head_dim=4))
    with pytest.raises(ValueError, match="unknown model preset"):
        model_config("wan3")
    c = torch.zeros(1, 2, 32)
    with pytest.raises(ValueError, match="latent channels"):
        tiny(torch.zeros(1, 3, 1, 4, 4), torch.zeros(1), c)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        tiny(torch.zeros(1, 4, 1, 5, 4), torch.zeros(1), c)
    with pytest.raises(ValueError, match=r"context must be .* got \(1, 2, 384\)"):
        tiny(torch.zeros(1, 4, 1, 4, 4), torch.zeros(1), torch.zeros(1, 2, 384))
    with pytest.raises(ValueError, match="timestep must be a scalar or shaped"):
        tiny(torch.zeros(1, 4, 1, 4, 4), torch.zeros(2), c)


def test_scalar_timestep_broadcasts(tiny, inputs):
    x, _, c = inputs
    with torch.no_grad():
        torch.testing.assert_close(tiny(x, torch.tensor(250.0), c), tiny(x, torch.full((2,), 250.0), c))


def test_wan_sizes_build_on_meta():
    big = videodit_wan21_14b(device="meta")
    assert all(p.is_meta for p in big.parameters())
    assert big.config.dim == 5120 and len(big.blocks) == 40
    assert big.num_params() == 14_288_491_584
    small = videodit_wan21_1_3b(device="meta")
    assert small.config.dim == 1536 and len(small.blocks) == 30 and small.config.ffn_dim == 8960
    assert small.num_params() == 1_418_996_800


def test_presets():
    assert videodit_tiny().config.dim <= 64
    demo = videodit_demo()
    assert demo.config.text_dim == 384 and demo.num_params() < 5_000_000
    cfg = ModelConfig.from_dict(model_config("demo").to_dict())
    assert cfg == model_config("demo")


def test_wan_init_predicts_zero():
    model = videodit_tiny()
    x = torch.randn(1, 4, 1, 4, 4)
    with torch.no_grad():
        assert model(x, torch.tensor([500.0]), torch.randn(1, 3, 32)).abs().max() == 0


def test_timestep_features_closed_form():
    t = torch.tensor([0.0, 1.0, 999.0])
    f = timestep_features(t, 8)
    w = torch.tensor([10000 ** (-i / 4) for i in range(4)])
    expected = torch.cat([torch.cos(t[:, None] * w), torch.sin(t[:, None] * w)], dim=-1)
    torch.testing.assert_close(f, expected, atol=1e-4, rtol=1e-5)


def test_absolute_position_table_closed_form():
    table = absolute_position_table((2, 3, 4), 12)  # dim 12: 4 channels each for t, h, w
    assert table.shape == (24, 12)
    t, h, w = 1, 2, 3
    n = (t * 3 + h) * 4 + w
    part = [math.sin(t), math.sin(t / 10), math.cos(t), math.cos(t / 10)]  # ω = 100^(-j/2)
    part += [math.sin(h), math.sin(h / 10), math.cos(h), math.cos(h / 10)]
    part += [math.sin(w), math.sin(w / 10), math.cos(w), math.cos(w / 10)]
    torch.testing.assert_close(table[n], torch.tensor(part), atol=1e-6, rtol=0)


def test_abs_pos_embed_is_opt_in_and_adds_no_weights(inputs):
    from tests.vdiff.models.conftest import INIT_DICT

    assert ModelConfig().abs_pos_embed is False
    torch.manual_seed(0)
    plain = build_model(ModelConfig(**INIT_DICT))
    torch.manual_seed(0)
    with_pos = build_model(ModelConfig(**INIT_DICT, abs_pos_embed=True))
    assert plain.state_dict().keys() == with_pos.state_dict().keys()
    with_pos.load_state_dict(plain.state_dict())
    x, t, c = inputs
    e0, e1 = plain.embed(x, t, c), with_pos.embed(x, t, c)
    grid = plain.embed.grid(tuple(x.shape))
    # exactly the table added to every sample's tokens
    table = absolute_position_table(grid, plain.config.dim)  # (N, dim)
    torch.testing.assert_close(e1.tokens - e0.tokens, table.expand_as(e0.tokens))


def test_rope_table_closed_form_and_relative_positions():
    dims = (4, 4, 4)  # head_dim 12: 2 channel pairs each for t, h, w
    table = rope_table((2, 3, 5), dims)  # (N, 6, 2)
    assert table.shape == (30, 6, 2)
    t, h, w = 1, 2, 3
    n = (t * 3 + h) * 5 + w
    angles = torch.tensor([t, t / 100, h, h / 100, w, w / 100], dtype=torch.float64)
    torch.testing.assert_close(table[n, :, 0], angles.cos().float())
    torch.testing.assert_close(table[n, :, 1], angles.sin().float())
    # RoPE makes q.k depend only on the position difference.
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 12, generator=g), torch.randn(1, 1, 1, 12, generator=g)
    table = rope_table((8, 1, 1), dims)

    def dot(i, j):
        return (apply_rope(q, table[i : i + 1]) * apply_rope(k, table[j : j + 1])).sum()

    torch.testing.assert_close(dot(1, 3), dot(4, 6))
    assert not torch.allclose(dot(1, 3), dot(1, 4))


def _raster_and_tiles(randomize, **overrides):
    """The same random tiny model with attention.token_order=raster and =tiles (2x2 tiles)."""
    from tests.vdiff.models.conftest import INIT_DICT

    models = []
    for order in ("raster", "tiles"):
        cfg = ModelConfig(**INIT_DICT, **overrides, attention=AttentionConfig(token_order=order, tile=2))
        models.append(randomize(build_model(cfg)).eval())
    return models


@pytest.mark.parametrize("abs_pos_embed", [False, True])
@pytest.mark.parametrize("latent_hw", [(6, 10), (8, 8)])  # token grids 3x5 (ragged 2x2 tiles) and 4x4
def test_tile_order_gives_the_raster_output_and_gradients(randomize, make_inputs, abs_pos_embed, latent_hw):
    raster, tiles = _raster_and_tiles(randomize, abs_pos_embed=abs_pos_embed)
    x, t, c = make_inputs(height=latent_hw[0], width=latent_hw[1])
    e_r, e_t = raster.embed(x, t, c), tiles.embed(x, t, c)
    assert e_r.order is None
    assert torch.equal(e_t.order, tile_order(e_t.grid, tile=2))  # 2x2 tiles of the config
    assert not torch.equal(e_t.order, torch.arange(e_t.order.numel()))  # a real permutation
    # tokens and RoPE rows (position embedding included) are the raster ones, reordered
    torch.testing.assert_close(e_t.tokens, e_r.tokens[:, e_t.order], atol=0, rtol=0)
    torch.testing.assert_close(e_t.rope, e_r.rope[e_t.order], atol=0, rtol=0)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    outs, grads = [], []
    for m in (raster, tiles):
        xi = x.clone().requires_grad_(True)
        out = m(xi, t, c)
        (out * w).sum().backward()
        outs.append(out.detach())
        grads.append({"x": xi.grad, **{n: p.grad for n, p in m.named_parameters()}})
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    assert grads[0]["blocks.0.self_attn.q.weight"].abs().sum() > 0
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_sparse_backend_runs_in_tile_order_and_matches_dense_raster(randomize, make_inputs):
    from tests.vdiff.models.conftest import INIT_DICT

    # NOTE: cdf_threshold=1 keeps every block, so sparse attention is exact; 12x17 = 204 tokens
    # per frame (2 Q blocks, 4 K blocks, ragged 8x8 tiles).
    sparse_cfg = AttentionConfig(backend="sparse", options={"cdf_threshold": 1.0})
    model = randomize(build_model(ModelConfig(**INIT_DICT, attention=sparse_cfg))).eval()
    x, t, c = make_inputs(batch=1, frames=1, height=24, width=34)
    with torch.no_grad():
        e = model.embed(x, t, c)
        assert model.embed.token_order == "tiles"
        assert torch.equal(e.order, tile_order(e.grid, tile=8))
        out = model(x, t, c)
        model.set_attention(AttentionConfig())
        assert model.embed(x, t, c).order is None  # set_attention follows the new config
        ref = model(x, t, c)
        model.set_attention(AttentionConfig(per_layer={1: "sparse"}, options={"cdf_threshold": 1.0}))
        assert torch.equal(model.embed(x, t, c).order, tile_order(e.grid, tile=8))  # one sparse layer: tiles
        model.set_attention(AttentionConfig(backend="sparse", token_order="raster"))
        assert model.embed(x, t, c).order is None
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="token order must be 'raster' or 'tiles'"):
        model.set_token_order("auto")
