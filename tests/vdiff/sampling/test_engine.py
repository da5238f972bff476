"""The sampling engine in ``vdiff.sampling`` gives ``vdiff sample``'s videos bit for bit.

Each test writes a tiny training run (a full fine-tune with EMA weights, and a LoRA run on a base
model folder), samples it with the command line (``pipelines.sample.main``, ``save_arrays=true``)
and with the library (``load_pipeline`` + ``VideoPipeline.__call__``) from the same seeds, and
requires the decoded float32 videos to be equal (``np.array_equal``, no tolerance): both paths
must run the same engine.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vdiff.checkpoint import save_checkpoint
from vdiff.config import load_config, to_dict
from vdiff.models import save_model, videodit_tiny
from vdiff.models.lora import add_lora
from vdiff.sampling import SampleConfig, load_pipeline

PROMPTS = ["a red circle moving left", "a blue square moving up"]
ENCODERS = {"text": {"max_length": 16}, "vae": {"kind": "pixel", "patch": 4}}
LORA = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q", "k", "v", "o"]}


def tiny_model(seed: int) -> torch.nn.Module:
    """videodit_tiny for 48-channel pixel latents and MiniLM context, with a non-zero output layer."""
    torch.manual_seed(seed)
    model = videodit_tiny(in_channels=48, out_channels=48, text_dim=384)
    torch.nn.init.normal_(model.unembed.proj.weight, std=0.5)
    return model


def scaled(model: torch.nn.Module, factor: float) -> torch.nn.Module:
    """A copy of ``model`` whose trainable parameters are multiplied by ``factor`` (a stand-in EMA)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            if p.requires_grad:
                p.mul_(factor)
    return out


def write_run(run: Path, model: torch.nn.Module, **sections: object) -> Path:
    """A training-run folder: ``config.yaml`` with the sections vdiff reads, and one checkpoint."""
    config = {"seed": 0, "model": to_dict(model.config), "ema": {"enabled": True}, **ENCODERS, **sections}
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    trainable = [p for p in model.parameters() if p.requires_grad]
    lora = "lora" in sections
    save_checkpoint(
        run / "checkpoints",
        step=3,
        model=model,
        optimizer=torch.optim.AdamW(trainable),
        ema=scaled(model, 0.9),
        trainable_only=lora,
    )
    return run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("full") / "run", tiny_model(0))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    base = save_model(tiny_model(1), root / "base")
    model = add_lora(tiny_model(1), **LORA)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # NOTE: peft zeroes lora_B; random adapters make the merge matter
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return write_run(root / "run", model, init_from=str(base), lora=LORA)


def cli_videos(model: Path, out: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """``vdiff sample``'s decoded videos ``{file stem: (T, H, W, 3) float32}``."""
    from pipelines.sample import main

    args = ["--model", str(model), "--out", str(out), "save_arrays=true", "progress=false"]
    assert main([*args, *(w for p in PROMPTS for w in ("--prompt", p)), *keys]) == 0
    return {f.stem: np.load(f) for f in out.glob("*.npy")}


def engine_videos(model: Path, keys: list[str]) -> tuple[dict[str, np.ndarray], tuple[int, int] | None]:
    """The same videos from the library (seed + p * videos_per_prompt + i, the CLI's batches), and
    the step cache's (computed, skipped) branch-steps of the last batch."""
    cfg = load_config(SampleConfig, None, keys)
    pipe = load_pipeline(model, cfg)
    n = cfg.videos_per_prompt
    jobs = [(p, i, cfg.seed + k * n + i) for k, p in enumerate(PROMPTS) for i in range(n)]
    out = {}
    for start in range(0, len(jobs), cfg.batch_size):
        batch = jobs[start : start + cfg.batch_size]
        videos = pipe([p for p, _, _ in batch], seeds=[s for _, _, s in batch], **cfg.loop_options())
        for (p, i, _), video in zip(batch, videos):  # video: (3, T, H, W)
            out[f"{p}-{i}"] = video.permute(1, 2, 3, 0).float().numpy()  # (T, H, W, 3)
    return out, pipe.last_cache_stats


def assert_bit_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b) and a
    for name in a:
        assert a[name].dtype == b[name].dtype == np.float32 and a[name].shape == b[name].shape
        assert np.array_equal(a[name], b[name]), f"{name}: max abs diff {np.abs(a[name] - b[name]).max()}"


COMMON = ["steps=3", "frames=4", "height=32", "width=32", "seed=5"]
CASES = {
    "ema_guidance": ["guidance=3.0", "videos_per_prompt=2", "batch_size=2"],
    # NOTE: threshold 0.3 skips some middle steps here, not all (measured: 8 computed, 2 skipped)
    "raw_weights_step_cache": [
        "weights=model",
        "guidance=2.0",
        "steps=5",
        "cache.enabled=true",
        "cache.threshold=0.3",
    ],
    "unipc_no_guidance": ["guidance=1.0", "sampler=unipc", "negative_prompt=noise"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_engine_equals_cli_on_a_training_run(full_run: Path, tmp_path: Path, case: str) -> None:
    keys = [*COMMON, *CASES[case]]
    engine, cache_stats = engine_videos(full_run, keys)
    assert_bit_identical(engine, cli_videos(full_run, tmp_path / "out", keys))
    if "cache.enabled=true" in keys:
        assert cache_stats is not None and cache_stats[1] > 0, cache_stats


def test_engine_equals_cli_on_a_lora_run(lora_run: Path, tmp_path: Path) -> None:
    keys = [*COMMON, "guidance=3.0"]
    engine, _ = engine_videos(lora_run, keys)
    assert_bit_identical(engine, cli_videos(lora_run, tmp_path / "out", keys))
    # the adapters were folded in: the raw weights (other adapters) give other videos
    raw, _ = engine_videos(lora_run, [*keys, "weights=model"])
    assert all(np.abs(raw[k] - engine[k]).max() > 1e-4 for k in engine)


def test_engine_imports_nothing_outside_vdiff() -> None:
    code = (
        "import sys, vdiff.sampling; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pipelines', 'eval', 'data_prep')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[3]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
