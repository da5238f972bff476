"""The tiny VideoDiT under parallelize(): outputs and gradients equal one process's (rtol 1e-4).

Gradients are read after FSDP2 has averaged them over the ranks, so a wrong sequence-parallel
gradient scale (a factor of the degree) fails these tests, not only a wrong forward.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vdiff.attention import AttentionConfig
from vdiff.models import videodit_tiny
from vdiff.parallel import ParallelConfig, build_mesh
from vdiff.parallel.parallelize import checkpointed_blocks, parallelize

# NOTE: latents (T, H, W) = (3, 6, 6) with patch (1, 2, 2) give 27 tokens: not divisible by 2 or 4;
# 3x3 tokens per frame make 2x2 tiles ragged, so tile order is not raster order.
SHAPE = (2, 4, 3, 6, 6)


def _model(token_order: str = "raster") -> nn.Module:
    torch.manual_seed(0)
    model = videodit_tiny(attention=AttentionConfig(token_order=token_order, tile=2))
    with torch.no_grad():
        # NOTE: the zero-initialised output projection would hide every block from the gradients.
        nn.init.normal_(model.unembed.proj.weight, std=0.2)
    return model


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "x": torch.randn(SHAPE, generator=g),
        "timestep": torch.tensor([250.0, 875.5]),
        "context": torch.randn(2, 5, 32, generator=g),
        "weight": torch.randn(SHAPE, generator=g),
    }


def _loss_and_grads(model: nn.Module) -> dict:
    d = _inputs()
    out = model(d["x"], d["timestep"], d["context"])
    (out * d["weight"]).sum().backward()
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad  # FSDP grads are DTensors
        grads[name] = g
    return {"out": out.detach(), "grads": grads}


def _parallel_run(rank: int, world_size: int, configs: list[dict]) -> list[dict]:
    results = []
    for kw in configs:
        kw = dict(kw)
        order = kw.pop("token_order", "raster")
        cfg = ParallelConfig(param_dtype="float32", **kw)
        model = parallelize(_model(order), build_mesh(cfg), cfg)
        assert model.embed.token_order == order
        results.append(_loss_and_grads(model))
    return results


def _three_heads_on_two_ulysses_ranks(rank: int, world_size: int) -> str:
    cfg = ParallelConfig(ulysses=2)
    try:
        parallelize(videodit_tiny(num_heads=3), build_mesh(cfg), cfg)
    except ValueError as e:
        return str(e)
    return ""


def _check(per_rank: list[list[dict]], configs: list[dict]) -> None:
    ref = _loss_and_grads(_model())
    assert any(g.abs().sum() > 0 for n, g in ref["grads"].items() if n.startswith("blocks.0."))
    for results in per_rank:
        for kw, got in zip(configs, results):
            torch.testing.assert_close(got["out"], ref["out"], rtol=1e-4, atol=1e-5, msg=str(kw))
            assert got["grads"].keys() == ref["grads"].keys()
            for name, g in ref["grads"].items():
                torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-5, msg=f"{kw} {name}")


@pytest.mark.dist
def test_ulysses_and_ring_model_match_one_process(run_distributed):
    # NOTE: the one-process reference runs in raster order; tile order must give its results too.
    configs = [
        {"ulysses": 2},
        {"ring": 2, "activation_checkpoint": "full"},
        {"ulysses": 2, "token_order": "tiles"},
    ]
    _check(run_distributed(_parallel_run, 2, configs), configs)


@pytest.mark.dist
def test_heads_not_divisible_by_ulysses_is_a_clear_error(run_distributed):
    for message in run_distributed(_three_heads_on_two_ulysses_ranks, 2):
        assert "parallel.ulysses=2 does not divide the model's 3 attention heads" in message
        assert "parallel.ring" in message


@pytest.mark.dist
def test_ulysses_by_ring_model_matches_one_process(run_distributed):
    configs = [{"ulysses": 2, "ring": 2}]
    _check(run_distributed(_parallel_run, 4, configs), configs)


def test_parallelize_on_one_process_keeps_names_and_outputs():
    cfg = ParallelConfig(activation_checkpoint="selective", ac_every=2, param_dtype="float32")
    plain, wrapped = _model(), parallelize(_model(), build_mesh(cfg), cfg)
    assert list(plain.state_dict()) == list(wrapped.state_dict())
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in wrapped.named_parameters()]
    assert checkpointed_blocks(len(plain.blocks), cfg) == [1]
    calls = {0: 0, 1: 0}
    for i in calls:
        wrapped.blocks[i].ffn.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    torch.testing.assert_close(_loss_and_grads(wrapped), _loss_and_grads(plain))
    assert calls == {0: 1, 1: 2}  # block 1 is recomputed in backward, block 0 is not


def test_checkpointed_blocks():
    assert checkpointed_blocks(4, ParallelConfig(activation_checkpoint="full")) == [0, 1, 2, 3]
    assert checkpointed_blocks(6, ParallelConfig(activation_checkpoint="selective", ac_every=3)) == [2, 5]
    assert checkpointed_blocks(4, ParallelConfig()) == []


@pytest.mark.slow
def test_compiled_checkpointed_blocks_match_eager():
    """parallel.compile=true (inductor on CPU: about a minute to compile) with full recomputation."""
    cfg = ParallelConfig(compile=True, activation_checkpoint="full", param_dtype="float32")
    plain, compiled = _model(), parallelize(_model(), build_mesh(cfg), cfg)
    torch.testing.assert_close(_loss_and_grads(compiled), _loss_and_grads(plain), rtol=1e-4, atol=1e-5)
