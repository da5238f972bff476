"""RAFT ("things") against VBench's definitions in vbench/third_party/RAFT/core (random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eval.config import EvalConfig, WeightsConfig
from eval.metrics.temporal import DynamicDegree, is_static
from eval.models.raft import RAFT, CorrPyramid, RaftFlow, load_raft, pad_to_8
from eval.registry import UnscorableVideoError, VideoSample
from tests.eval.conftest import linear_frames

CONV = ("weight", "bias")
BATCH = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def vbench_raft_keys() -> set[str]:
    """The state-dict names of VBench's RAFT(small=False), listed from its source: extractor.py
    BasicEncoder (conv1, norm1, layer1-3 of two ResidualBlocks with conv1/conv2/norm1/norm2 and,
    when strided, norm3 + downsample = Sequential(conv, norm3), conv2); fnet uses instance norm
    (no tensors), cnet batch norm; update.py BasicUpdateBlock (encoder convc1/convc2/convf1/convf2/
    conv, gru SepConvGRU convz1/convr1/convq1/convz2/convr2/convq2, flow_head conv1/conv2, mask
    Sequential(conv, ReLU, conv))."""
    keys: set[str] = set()

    def add(prefix: str, names: tuple[str, ...]) -> None:
        keys.update(f"{prefix}.{n}" for n in names)

    for enc, norm in (("fnet", ()), ("cnet", BATCH)):
        add(f"{enc}.conv1", CONV)
        add(f"{enc}.norm1", norm)
        add(f"{enc}.conv2", CONV)
        for layer, strided in ((1, False), (2, True), (3, True)):
            for blk in (0, 1):
                p = f"{enc}.layer{layer}.{blk}"
                for c in ("conv1", "conv2"):
                    add(f"{p}.{c}", CONV)
                for nrm in ("norm1", "norm2"):
                    add(f"{p}.{nrm}", norm)
                if strided and blk == 0:
                    add(f"{p}.norm3", norm)
                    add(f"{p}.downsample.0", CONV)
                    add(f"{p}.downsample.1", norm)
    for c in ("convc1", "convc2", "convf1", "convf2", "conv"):
        add(f"update_block.encoder.{c}", CONV)
    for c in ("convz1", "convr1", "convq1", "convz2", "convr2", "convq2"):
        add(f"update_block.gru.{c}", CONV)
    for c in ("flow_head.conv1", "flow_head.conv2", "mask.0", "mask.2"):
        add(f"update_block.{c}", CONV)
    return keys


def test_state_dict_keys_and_shapes_match_vbench_raft():
    sd = RAFT().state_dict()
    assert set(sd) == vbench_raft_keys()
    shapes = {
        "fnet.conv1.weight": (64, 3, 7, 7),
        "fnet.conv2.weight": (256, 128, 1, 1),
        "cnet.conv2.weight": (256, 128, 1, 1),
        "cnet.layer2.0.downsample.0.weight": (96, 64, 1, 1),
        "cnet.layer3.0.norm3.running_var": (128,),
        "update_block.encoder.convc1.weight": (256, 4 * 9 * 9, 1, 1),
        "update_block.encoder.conv.weight": (126, 256, 3, 3),
        "update_block.gru.convz1.weight": (128, 384, 1, 5),
        "update_block.gru.convq2.weight": (128, 384, 5, 1),
        "update_block.flow_head.conv1.weight": (256, 128, 3, 3),
        "update_block.mask.2.weight": (576, 256, 1, 1),
    }
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes


def randomized(model: RAFT, seed: int = 0) -> RAFT:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(
                    torch.rand(t.shape, generator=g) + 0.5
                    if "running_var" in name
                    else torch.randn(t.shape, generator=g) * 0.05
                )
    return model.eval()


def test_checkpoint_with_dataparallel_prefix_loads_strictly(tmp_path):
    model = randomized(RAFT())
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "raft-things.pth")
    loaded = load_raft(tmp_path / "raft-things.pth")
    a, b = (torch.rand(1, 3, 128, 136) * 255 for _ in range(2))
    with torch.no_grad():
        assert torch.equal(loaded(a, b, iters=3), model(a, b, iters=3))
    with pytest.raises(UnscorableVideoError, match="too small for RAFT"):
        RaftFlow(loaded)(np.zeros((64, 200, 3), np.uint8), np.zeros((64, 200, 3), np.uint8))
    bad = {k: v for k, v in model.state_dict().items() if "mask" not in k}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing keys"):
        load_raft(tmp_path / "bad.pth")


def test_padder_input_range_and_output_size():
    # InputPadder("sintel"): pad = ((ht//8)+1)*8 - ht) % 8, split as [pad//2, pad - pad//2], replicate.
    assert pad_to_8(100, 130) == (3, 3, 2, 2)
    assert pad_to_8(64, 64) == (0, 0, 0, 0)
    assert pad_to_8(125, 131) == (2, 3, 1, 2)
    model = randomized(RAFT())
    seen = []
    model.fnet.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (125, 131, 3), dtype=np.uint8) for _ in range(2))
    flow = RaftFlow(model, iters=2)(a, b)
    assert flow.shape == (128, 136, 2) and flow.dtype == np.float32  # VBench scores the padded flow
    x = seen[0]  # (2, 3, 128, 136): both frames, 2 * (x / 255) - 1, replicate-padded
    padded = F.pad(
        torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).float(), (2, 3, 1, 2), mode="replicate"
    )
    assert torch.allclose(x, 2 * (padded / 255.0) - 1.0)


def test_correlation_lookup_window_order_and_scale():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(1, 8, 16, 16, generator=g), torch.randn(1, 8, 16, 16, generator=g)
    corr = CorrPyramid(f1, f2, levels=2, radius=2)
    from eval.models.raft import coords_grid

    out = corr(coords_grid(1, 16, 16, f1.device))  # (1, 2 * 25, 16, 16)
    assert out.shape == (1, 50, 16, 16)
    y, x = 7, 5
    for i, dx in enumerate(range(-2, 3)):  # first window axis: x offset (RAFT's convention)
        for j, dy in enumerate(range(-2, 3)):
            want = (f1[0, :, y, x] * f2[0, :, y + dy, x + dx]).sum() / 8**0.5
            assert out[0, i * 5 + j, y, x] == pytest.approx(want.item(), abs=1e-5)


def test_convex_upsampling_keeps_a_constant_flow():
    flow = torch.full((1, 2, 3, 4), 0.5)
    mask = torch.randn(1, 576, 3, 4)
    up = RAFT.upsample(flow, mask)
    # Interior pixels: a convex combination of 8 * 0.5 everywhere (borders mix the zero padding).
    assert up.shape == (1, 2, 24, 32) and torch.allclose(up[..., 8:16, 8:24], torch.full((1, 2, 8, 16), 4.0))


def test_dynamic_degree_and_static_test_run_raft_when_weights_given(tmp_path):
    torch.save(randomized(RAFT()).state_dict(), tmp_path / "raft-things.pth")
    cfg = EvalConfig(weights=WeightsConfig(raft=str(tmp_path / "raft-things.pth")))
    metric = DynamicDegree(cfg)
    assert metric.comparable and "RAFT" in metric.method and "f9d345a2" in metric.method
    frames = np.stack([np.kron(f, np.ones((2, 2, 1), np.uint8)) for f in linear_frames(n=3)])  # 128 px
    res = metric.compute(VideoSample(path=tmp_path / "x-0.mp4", prompt="x", frames=frames, fps=8.0))
    assert isinstance(res["video_results"], bool)
    assert isinstance(is_static(frames, metric.flow), bool)


def test_raft_flows_are_shared_between_dynamic_degree_and_static_filter(tmp_path, monkeypatch):
    from eval.flow import shared_flows
    from eval.metrics.temporal import build_flow

    torch.save(randomized(RAFT()).state_dict(), tmp_path / "raft-things.pth")
    cfg = EvalConfig(weights=WeightsConfig(raft=str(tmp_path / "raft-things.pth")))
    calls = []
    real = RaftFlow.__call__
    monkeypatch.setattr(RaftFlow, "__call__", lambda self, a, b: calls.append(1) or real(self, a, b))
    dyn, _, _ = build_flow(cfg, dimension="dynamic_degree")
    static, _, _ = build_flow(cfg, dimension="static filter")  # another RaftFlow from the same file
    frames = np.stack([np.kron(f, np.ones((2, 2, 1), np.uint8)) for f in linear_frames(n=3)])  # 128 px
    with shared_flows(2**30):
        first = dyn(frames[0], frames[1])
        again = static(frames[0], frames[1])
        static(frames[1], frames[2])
    assert len(calls) == 2 and np.array_equal(first, again)
    # Outside a video's shared_flows block nothing is kept.
    dyn(frames[0], frames[1])
    assert len(calls) == 3
