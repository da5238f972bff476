"""``mfu`` in metrics.jsonl: logged when the device's peak is known, equal to the model FLOPs rate
(vdiff.models.flops.train_flops, itself checked against FlopCounterMode) over that peak."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import webdataset as wds

from data_prep.synthetic import moving_shapes, shape_caption
from pipelines.train import train
from vdiff.config import load_config
from vdiff.models.flops import PEAK_ENV, train_flops
from vdiff.training import TrainConfig
from vdiff.training.metrics import device_peak_flops, training_mfu

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two captioned moving-shape clips (8 frames, 16x16 at 8 fps) in one WebDataset shard."""
    from vdiff.io.video import encode_mp4

    root = tmp_path_factory.mktemp("clips")
    (root / "shards").mkdir()
    with wds.TarWriter(str(root / "shards" / "shard-000000.tar")) as w:
        for i, (color, shape, direction) in enumerate([("red", "circle", "left"), ("blue", "square", "up")]):
            frames = moving_shapes(color, shape, direction, num_frames=8, height=16, width=16, fps=8, seed=i)
            meta = {"caption": shape_caption(color, shape, direction), "fps": 8.0, "num_frames": 8,
                    "width": 16, "height": 16}  # fmt: skip
            w.write({"__key__": f"clip-{i}", "mp4": encode_mp4(frames, 8.0), "json": json.dumps(meta)})
    return root


def run(shard: Path, out: Path, *overrides: str) -> tuple[list[dict], TrainConfig]:
    cfg = load_config(
        TrainConfig,
        CONFIG,
        [
            f"data.path={shard}",
            f"run_dir={out}",
            "data.num_frames=4",
            "data.height=16",
            "data.width=16",
            "text.max_length=8",
            "train.batch_size=2",
            "train.log_every=1",
            "train.steps=3",
            "train.warmup_log_steps=1",
            "train.tensorboard=false",
            "train.progress=false",
            "checkpoint.every=0",
            "train.device=cpu",
            *overrides,
        ],
    )
    folder = train(cfg)
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()], cfg


def test_mfu_logged_with_a_known_peak(shard: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(PEAK_ENV, raising=False)
    rows, cfg = run(shard, tmp_path / "run", "train.peak_tflops=0.001")
    # 16x16 px, 4 frames -> latents (4, 4, 4) -> 16 tokens; text.max_length=8 -> 8 text tokens
    flops = train_flops(cfg.model, tokens=16, text_len=8)
    assert rows[0]["mfu"] is None  # the warm-up step: no rate yet
    for r in rows[1:]:
        assert r["mfu"] == pytest.approx(r["samples_per_s"] * flops / 1e9, rel=1e-9)


def test_no_mfu_on_cpu_without_a_peak(shard: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(PEAK_ENV, raising=False)
    rows, _ = run(shard, tmp_path / "run")
    assert rows and all("mfu" not in r for r in rows)


def test_peak_and_mfu_helpers(monkeypatch) -> None:
    monkeypatch.delenv(PEAK_ENV, raising=False)
    cpu = torch.device("cpu")
    assert device_peak_flops(cpu) is None
    assert device_peak_flops(cpu, override_tflops=2) == 2e12
    monkeypatch.setenv(PEAK_ENV, "3")
    assert device_peak_flops(cpu) == 3e12
    cfg = load_config(TrainConfig, CONFIG, []).model
    want = 5.0 * train_flops(cfg, tokens=2 * 3 * 4, text_len=7) / 1e12
    got = training_mfu(5.0, cfg, latent_shape=(cfg.in_channels, 2, 6, 8), text_len=7, peak=1e12)
    assert got == pytest.approx(want, rel=1e-12)
    assert training_mfu(None, cfg, latent_shape=(cfg.in_channels, 2, 6, 8), text_len=7, peak=1e12) is None
