"""AMT-S against VBench's definitions in vbench/third_party/amt (random weights built here).

The expected state-dict layout below is written from reading VBench's code (``networks/AMT-S.py``
``Model(corr_radius=3, corr_lvls=4, num_flows=3)`` with ``channels=[20, 32, 44, 56]``,
``skip_channels=20``, and ``networks/blocks/*.py``), not from vdiff's module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval import EvalConfig, evaluate
from eval.config import WeightsConfig
from eval.metric import MissingWeightsError
from eval.metrics.temporal import MotionSmoothness
from eval.models.amt import (
    AMTS,
    AmtInterpolator,
    load_amt_s,
    pad_to,
    to_uint8,
    vbench_amt_scale,
    vbench_motion_score,
    warp,
)
from eval.registry import UnscorableVideoError
from tests.eval.conftest import texture
from vdiff.io.video import write_mp4

Shapes = dict[str, tuple[int, ...]]


def conv(prefix: str, cout: int, cin: int, k: int | tuple[int, int]) -> Shapes:
    kh, kw = (k, k) if isinstance(k, int) else k
    return {f"{prefix}.weight": (cout, cin, kh, kw), f"{prefix}.bias": (cout,)}


def convrelu(prefix: str, cout: int, cin: int, k: int = 3) -> Shapes:
    """ifrnet.convrelu: Sequential(Conv2d, PReLU(cout))."""
    return {**conv(f"{prefix}.0", cout, cin, k), f"{prefix}.1.weight": (cout,)}


def resblock(prefix: str, ch: int, side: int) -> Shapes:
    """ifrnet.ResBlock: conv1/conv3 convrelu(ch), conv2/conv4 convrelu(side), conv5, prelu."""
    out: Shapes = {}
    for name, c in (("conv1", ch), ("conv2", side), ("conv3", ch), ("conv4", side)):
        out |= convrelu(f"{prefix}.{name}", c, c)
    return {**out, **conv(f"{prefix}.conv5", ch, ch, 3), f"{prefix}.prelu.weight": (ch,)}


def decoder(prefix: str, cin: int, mid: int, cout: int) -> Shapes:
    """convblock = Sequential(convrelu(cin, mid), ResBlock(mid, 20), ConvTranspose2d(mid, cout, 4, 2, 1))."""
    return {
        **convrelu(f"{prefix}.convblock.0", mid, cin),
        **resblock(f"{prefix}.convblock.1", mid, 20),
        f"{prefix}.convblock.2.weight": (mid, cout, 4, 4),  # ConvTranspose2d: (in, out, k, k)
        f"{prefix}.convblock.2.bias": (cout,),
    }


def update(prefix: str, cdim: int) -> Shapes:
    """raft.SmallUpdateBlock(cdim, hidden_dim=76, flow_dim=20, corr_dim=64, fc_dim=68, levels 4, radius 3)."""
    corr = 2 * 4 * 7 * 7
    return {
        **conv(f"{prefix}.convc1", 64, corr, 1),
        **conv(f"{prefix}.convf1", 40, 4, 7),
        **conv(f"{prefix}.convf2", 20, 40, 3),
        **conv(f"{prefix}.conv", 68, 84, 3),
        **conv(f"{prefix}.gru.0", 76, 68 + 4 + cdim, 3),
        **conv(f"{prefix}.gru.2", 76, 76, 3),
        **conv(f"{prefix}.feat_head.0", 76, 76, 3),
        **conv(f"{prefix}.feat_head.2", cdim, 76, 3),
        **conv(f"{prefix}.flow_head.0", 76, 76, 3),
        **conv(f"{prefix}.flow_head.2", 4, 76, 3),
    }


def vbench_amt_s_shapes() -> Shapes:
    """Every tensor of VBench's AMT-S state dict with its shape (instance norms hold none)."""
    out: Shapes = {**conv("feat_encoder.conv1", 32, 3, 7), **conv("feat_encoder.conv2", 84, 96, 1)}
    cin = 32
    for layer, cout in ((1, 32), (2, 64), (3, 96)):  # feat_enc.SmallEncoder bottleneck stages
        for blk, c_in in ((0, cin), (1, cout)):
            p = f"feat_encoder.layer{layer}.{blk}"
            out |= conv(f"{p}.conv1", cout // 4, c_in, 1)
            out |= conv(f"{p}.conv2", cout // 4, cout // 4, 3)
            out |= conv(f"{p}.conv3", cout, cout // 4, 1)
            if blk == 0 and layer > 1:
                out |= conv(f"{p}.downsample.0", cout, c_in, 1)
        cin = cout
    prev = 3
    for i, ch in enumerate((20, 32, 44, 56), 1):  # ifrnet.Encoder
        out |= convrelu(f"encoder.pyramid{i}.0", ch, prev)
        out |= convrelu(f"encoder.pyramid{i}.1", ch, ch)
        prev = ch
    out |= decoder("decoder4", 2 * 56 + 1, 112, 44 + 4)  # InitDecoder(56, 44, 20)
    out |= decoder("decoder3", 3 * 44 + 4, 132, 32 + 4)  # IntermediateDecoder(44, 32, 20)
    out |= decoder("decoder2", 3 * 32 + 4, 96, 20 + 4)  # IntermediateDecoder(32, 20, 20)
    out |= decoder("decoder1", 3 * 20 + 4, 60, 8 * 3)  # MultiFlowDecoder(20, 20, 3)
    out |= update("update4", 44) | update("update3", 32) | update("update2", 20)
    out |= conv("comb_block.0", 18, 9, 3) | {"comb_block.1.weight": (18,)} | conv("comb_block.2", 3, 18, 3)
    return out


def test_state_dict_keys_and_shapes_match_vbench_amt_s():
    sd = AMTS().state_dict()
    expected = vbench_amt_s_shapes()
    assert set(sd) == set(expected)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    # AMT-S has 3.0 M parameters (AMT paper, Table 1).
    assert sum(v.numel() for v in sd.values()) == pytest.approx(2.99e6, rel=0.01)


def randomized(model: AMTS, seed: int = 0, scale: float = 0.05) -> AMTS:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            t.copy_(torch.randn(t.shape, generator=g) * scale)
    return model


def save_checkpoint(path: Path, model: AMTS) -> Path:
    """A file laid out as AMT's trainer saves it (what VBench reads ``['state_dict']`` from)."""
    torch.save(
        {"epoch": 299, "state_dict": model.state_dict(), "optim": {"param_groups": [{"lr": 2e-5}]}}, path
    )
    return path


def test_checkpoint_loads_strictly_and_predicts(tmp_path):
    model = randomized(AMTS())
    loaded = load_amt_s(save_checkpoint(tmp_path / "amt-s.pth", model))
    x0, x1 = torch.rand(1, 3, 128, 160), torch.rand(1, 3, 128, 160)
    embt = torch.full((1, 1, 1, 1), 0.5)
    with torch.no_grad():
        a, b = model.eval()(x0, x1, embt), loaded(x0, x1, embt)
    assert a.shape == (1, 3, 128, 160) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1  # clamped as VBench's imgt_pred


def test_wrong_checkpoint_is_refused(tmp_path):
    sd = AMTS().state_dict()
    sd.pop("comb_block.2.bias")
    path = tmp_path / "other.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ValueError, match=r"not VBench's amt-s\.pth"):
        load_amt_s(path)


def test_warp_is_backward_sampling_with_border():
    img = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert torch.allclose(warp(img, torch.zeros(2, 2, 4, 5)), img, atol=1e-5)
    flow = torch.zeros(2, 2, 4, 5)
    flow[:, 0] = 1.0  # out(x, y) = img(x + 1, y); the last column repeats (border)
    expect = torch.cat([img[..., 1:], img[..., -1:]], dim=-1)
    assert torch.allclose(warp(img, flow), expect, atol=1e-4)


@pytest.mark.parametrize(
    ("h", "w", "expect"),
    [(64, 96, (0, 0, 0, 0)), (130, 170, (3, 3, 7, 7)), (120, 150, (5, 5, 4, 4)), (33, 17, (7, 8, 7, 8))],
)
def test_padding_is_input_padder_to_16(h, w, expect):
    # InputPadder(dims, 16): pad = ((x // 16 + 1) * 16 - x) % 16, split [pad // 2, pad - pad // 2].
    assert pad_to(h, w) == expect


def test_scale_follows_vbench_memory_rule():
    assert vbench_amt_scale(2160, 4096, None) == 1.0  # CPU: never resized
    assert vbench_amt_scale(320, 512, 80 * 2**30) == 1.0
    # 8 GiB, 4096x2160: 1024*512/(4096*2160) * sqrt((8192 - 2500) / 1500) = 0.11544 -> 16 / floor(47.09)
    assert vbench_amt_scale(2160, 4096, 8 * 2**30) == pytest.approx(16 / 47, abs=1e-12)


def test_to_uint8_truncates_like_tensor2img():
    x = torch.tensor([0.999, 0.5, 1.5, -0.2]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert to_uint8(x)[..., 0].tolist() == [[254, 127], [255, 0]]


def panning(n: int, h: int = 120, w: int = 130) -> np.ndarray:
    """(n, h, w, 3): a texture panning 2 px right and 1 px down per frame."""
    tex = texture(0, (h + n + 1, w + 2 * n + 2))
    return np.stack([tex[t : t + h, 2 * t : 2 * t + w] for t in range(n)])


class RecordingInterpolator:
    """Returns the mean of each neighbouring pair plus ``offset``; records what it was given."""

    def __init__(self, offset: int = 0) -> None:
        self.offset, self.seen = offset, None

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.seen = frames
        mid = (frames[:-1].astype(np.int32) + frames[1:]) // 2 + self.offset
        return np.clip(mid, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("t", [9, 10])
def test_motion_score_frame_selection_and_formula(t):
    # Frame i is a uniform grey of value 10 * i: each odd frame is exactly the mean of its neighbours.
    frames = np.stack([np.full((8, 8, 3), 10 * i, np.uint8) for i in range(t)])
    interp = RecordingInterpolator()
    assert vbench_motion_score(frames, interp) == 1.0
    assert np.array_equal(interp.seen, frames[0::2])  # only the even frames are interpolated
    # An interpolator off by 6 grey levels: VBench's (255 - mean |diff|) / 255.
    assert vbench_motion_score(frames, RecordingInterpolator(6)) == pytest.approx((255 - 6) / 255, abs=1e-12)
    with pytest.raises(UnscorableVideoError):
        vbench_motion_score(frames[:2], interp)


def test_interpolator_pads_runs_and_crops():
    model = randomized(AMTS()).eval()
    frames = panning(3, 114, 125)  # (3, 114, 125, 3): padded to 128 x 128 inside
    mids = AmtInterpolator(model)(frames)
    assert mids.shape == (2, 114, 125, 3) and mids.dtype == np.uint8
    # The same pair through the network by hand: replicate pad (left 1, right 2, top 7, bottom 7).
    x = torch.from_numpy(frames[:2]).permute(0, 3, 1, 2).contiguous() / 255.0
    x = torch.nn.functional.pad(x, (1, 2, 7, 7), mode="replicate")
    with torch.no_grad():
        ref = model(x[:1], x[1:], torch.full((1, 1, 1, 1), 0.5))[..., 7:121, 1:126]
    assert np.array_equal(mids[0], to_uint8(ref))
    # Below 113 px a side the correlation pyramid degenerates (NaN in VBench): not scored.
    with pytest.raises(UnscorableVideoError, match="too small for AMT-S"):
        AmtInterpolator(model)(panning(3, 112, 200))


def test_motion_smoothness_runs_amt_under_plain_key(tmp_path, monkeypatch):
    monkeypatch.delenv("VDIFF_AMT_S", raising=False)
    ckpt = save_checkpoint(tmp_path / "amt-s.pth", randomized(AMTS()))
    videos = tmp_path / "videos"
    videos.mkdir()
    write_mp4(videos / "a panning street-0.mp4", panning(5, 128, 128), fps=8, crf=0)
    cfg = EvalConfig(weights=WeightsConfig(amt_s=str(ckpt)), bootstrap_resamples=0)
    out = evaluate(
        videos, tmp_path / "out", dimensions=["motion_smoothness"], config=cfg, progress=False, report=False
    )
    assert "motion_smoothness" in out["results"] and "motion_smoothness" not in out["substitutes"]
    info = out["info"]["dimensions"]["motion_smoothness"]
    assert info["comparable"] and "AMT-S" in info["method"] and "24f9d2ab" in info["method"]
    assert "weights.amt_s" in info["weights"]
    on_disk = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    value = on_disk["motion_smoothness"][1][0]["video_results"]
    assert 0.0 <= value <= 1.0 and on_disk["motion_smoothness"][0] == pytest.approx(value)


def test_motion_smoothness_without_weights_is_labelled_substitute(tmp_path, monkeypatch):
    monkeypatch.delenv("VDIFF_AMT_S", raising=False)
    metric = MotionSmoothness(EvalConfig())
    assert not metric.comparable and metric.method.startswith("substitute")
    with pytest.raises(MissingWeightsError, match=r"weights\.amt_s"):
        MotionSmoothness(EvalConfig(weights=WeightsConfig(amt_s=str(tmp_path / "absent.pth"))))


def test_two_workers_equal_a_one_thread_single_process_run(tmp_path, monkeypatch):
    monkeypatch.delenv("VDIFF_AMT_S", raising=False)
    ckpt = save_checkpoint(tmp_path / "amt-s.pth", randomized(AMTS(), scale=0.02))
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(2):
        write_mp4(
            videos / f"a panning street-{i}.mp4",
            panning(5, 120, 128)[:, :, ::-1] if i else panning(5, 120, 128),
            fps=8,
            crf=0,
        )

    def run(workers: int) -> list[float]:
        cfg = EvalConfig(weights=WeightsConfig(amt_s=str(ckpt)), bootstrap_resamples=0, workers=workers)
        out = evaluate(
            videos,
            tmp_path / f"o{workers}",
            dimensions=["motion_smoothness"],
            config=cfg,
            progress=False,
            report=False,
        )
        return [e["video_results"] for e in out["results"]["motion_smoothness"][1]]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # NOTE: each worker runs torch on one thread; float32 rounding follows it
    try:
        single = run(1)
    finally:
        torch.set_num_threads(threads)
    assert run(2) == single
