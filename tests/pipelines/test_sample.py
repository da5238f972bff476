"""``vdiff sample``: determinism, the loop against references, guidance, caching, attention, cfg-parallel."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from vdiff.attention import AttentionConfig, register_backend, sdpa
from vdiff.attention.policy import AttentionPolicy
from vdiff.diffusion import euler_sample
from vdiff.encoders import PixelAutoencoder, TextEncoder
from vdiff.models import videodit_tiny
from vdiff.sampling import StepCache, StepCacheConfig, VideoPipeline, initial_noise, latent_shape

PROMPTS = ["a red circle moving left", "a blue square moving up"]
KW = dict(steps=4, frames=4, height=32, width=32, shift=3.0)


def tiny_transformer(seed: int = 0) -> torch.nn.Module:
    """videodit_tiny for 48-channel pixel latents and MiniLM context, with a non-zero output layer."""
    torch.manual_seed(seed)
    model = videodit_tiny(in_channels=48, out_channels=48, text_dim=384)
    # NOTE: the Wan init zeroes the output projection (the model would predict v = 0 and every
    # sample would be its noise); random weights make the tests see the transformer's output.
    torch.nn.init.normal_(model.unembed.proj.weight, std=0.5)
    return model.eval()


class ByteTextEncoder:
    """A weight-free stand-in for the subprocess test: byte i of a prompt -> a fixed random vector."""

    def __init__(self, dim: int = 384, length: int = 16) -> None:
        self.table = torch.randn(256, dim, generator=torch.Generator().manual_seed(0))
        self.length = length

    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.length, self.table.shape[1])
        for b, p in enumerate(prompts):
            ids = list(p.encode())[: self.length]
            out[b, : len(ids)] = self.table[ids]
        return out  # (B, L, D)

    def to(self, *args: object, **kwargs: object) -> ByteTextEncoder:
        return self


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder.from_pretrained("", max_length=16)


@pytest.fixture()
def tiny_parts(minilm):
    return tiny_transformer(), minilm, PixelAutoencoder(patch=4)


def _pipe(parts) -> VideoPipeline:
    transformer, text, vae = parts
    return VideoPipeline(transformer=transformer, text_encoder=text, vae=vae)


def test_same_seed_same_video_and_batch_invariance(tiny_parts):
    pipe = _pipe(tiny_parts)
    a = pipe(PROMPTS, seeds=[5, 6], guidance=3.0, **KW)
    b = pipe(PROMPTS, seeds=[5, 6], guidance=3.0, **KW)
    assert a.shape == (2, 3, 4, 32, 32)
    assert torch.equal(a, b)
    # NOTE: a video must not depend on its batch; CPU matmuls of batch 1 and 2 may differ in the last bits.
    single = pipe(PROMPTS[1:], seeds=[6], guidance=3.0, **KW)
    torch.testing.assert_close(single[0], a[1], atol=1e-5, rtol=0)
    other = pipe(PROMPTS[1:], seeds=[7], guidance=3.0, **KW)
    assert (other[0] - a[1]).abs().max() > 0.1


def test_euler_loop_matches_reference_integration(tiny_parts):
    """Guidance 1 and 2: the pipeline equals vdiff.diffusion.euler_sample over diffusers' sigmas (1e-5)."""
    transformer, text, vae = tiny_parts
    pipe = _pipe(tiny_parts)
    for g in (1.0, 2.0):
        out = pipe(PROMPTS[:1], seeds=[3], guidance=g, **KW)
        ctx, neg = text.encode(PROMPTS[:1]), text.encode([""])
        x = initial_noise(latent_shape(vae, frames=4, height=32, width=32), [3])

        def velocity(x, sigma, g=g, ctx=ctx, neg=neg):
            t = sigma * 1000
            v_c = transformer(x, t, ctx)
            return v_c if g == 1 else transformer(x, t, neg) + g * (v_c - transformer(x, t, neg))

        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
        sched.set_timesteps(4)
        with torch.no_grad():
            ref = vae.decode(euler_sample(velocity, x, sched.sigmas)).clamp(-1, 1)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_guidance_and_negative_prompt_change_the_video(tiny_parts):
    pipe = _pipe(tiny_parts)
    base = pipe(PROMPTS[:1], seeds=[0], guidance=1.0, **KW)
    guided = pipe(PROMPTS[:1], seeds=[0], guidance=4.0, **KW)
    negative = pipe(PROMPTS[:1], seeds=[0], guidance=4.0, negative_prompt="a green triangle", **KW)
    assert (base - guided).abs().max() > 1e-3
    assert (guided - negative).abs().max() > 1e-3


def test_unipc_sampler_runs_and_differs_from_euler(tiny_parts):
    pipe = _pipe(tiny_parts)
    euler = pipe(PROMPTS[:1], seeds=[0], guidance=1.0, sampler="euler", **KW)
    unipc = pipe(PROMPTS[:1], seeds=[0], guidance=1.0, sampler="unipc", **KW)
    assert torch.isfinite(unipc).all() and unipc.shape == euler.shape
    assert (euler - unipc).abs().max() > 1e-3


def test_step_cache_threshold_zero_is_exact_and_large_skips_all_middle_steps(tiny_parts):
    pipe = _pipe(tiny_parts)
    ref = pipe(PROMPTS[:1], seeds=[1], guidance=2.0, **KW)
    exact = pipe(
        PROMPTS[:1], seeds=[1], guidance=2.0, cache=StepCacheConfig(enabled=True, threshold=0.0), **KW
    )
    torch.testing.assert_close(exact, ref, atol=1e-5, rtol=0)
    assert pipe.last_cache_stats == (8, 0)  # 4 steps × 2 branches, all computed
    skipped = pipe(
        PROMPTS[:1], seeds=[1], guidance=2.0, cache=StepCacheConfig(enabled=True, threshold=1e9), **KW
    )
    # NOTE: the first and last steps are always computed: 2 of 4 steps per branch.
    assert pipe.last_cache_stats == (4, 4)
    assert torch.isfinite(skipped).all() and (skipped - ref).abs().max() > 1e-4


def test_step_cache_accumulates_relative_change():
    cache = StepCache(threshold=0.25, num_steps=5)
    x = torch.ones(1, 4, 8)
    assert cache.should_compute("cond", 0, x)
    cache.store("cond", torch.zeros(1, 4, 8))
    assert not cache.should_compute("cond", 1, x * 1.1)  # change 0.1
    assert not cache.should_compute("cond", 2, x * 1.21)  # 0.1 + 0.1
    assert cache.should_compute("cond", 3, x * 1.331)  # 0.3 >= 0.25: recompute, reset
    assert cache.should_compute("cond", 4, x * 1.331)  # last step always


_CALLS: list[int] = []


@register_backend("counting_test", supports_lse=False)
def _counting(q, k, v, *, scale, return_lse=False):
    _CALLS.append(q.shape[2])
    return sdpa(q, k, v, scale=scale)


def test_fast_backend_runs_only_between_the_dense_first_and_last_steps(tiny_parts):
    pipe = _pipe(tiny_parts)
    _CALLS.clear()
    policy = AttentionPolicy(backend="counting_test", dense_first_steps=1, dense_last_steps=1)
    out = pipe(PROMPTS[:1], seeds=[0], guidance=1.0, attention=policy, **KW)
    ref = pipe(PROMPTS[:1], seeds=[0], guidance=1.0, **KW)
    # 2 middle steps of 4 × 2 layers × 1 branch; the model's own ops are restored afterwards
    assert len(_CALLS) == 4
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    pipe(PROMPTS[:1], seeds=[0], guidance=1.0, **KW)
    assert len(_CALLS) == 4


def test_sparse_sage_sampling_stays_close_to_dense(tiny_parts):
    pipe = _pipe(tiny_parts)
    ref = pipe(PROMPTS[:1], seeds=[0], guidance=1.0, **KW)
    policy = AttentionPolicy(backend="sparse_sage", dense_first_steps=1, dense_last_steps=1)
    out = pipe(PROMPTS[:1], seeds=[0], guidance=1.0, attention=policy, **KW)
    # NOTE: 64 tokens fit one 128-query block, so sparsity keeps every block; what remains is
    # the INT8 quantisation of Q·Kᵀ on the 2 middle steps.
    assert (out - ref).abs().max() < 0.05


def test_sparse_policy_runs_every_step_in_tile_order_then_restores_raster(tiny_parts):
    pipe = _pipe(tiny_parts)
    pipe.transformer.set_attention(AttentionConfig(tile=2))  # 2x2 tiles of the 4x4-token frames
    ref = pipe(PROMPTS[:1], seeds=[0], guidance=1.0, **KW)
    orders: list[bool] = []
    hook = pipe.transformer.embed.register_forward_hook(lambda _m, _a, e: orders.append(e.order is not None))
    # NOTE: cdf_threshold=1 keeps every block: the sparse steps are exact, so only the order changes.
    policy = AttentionPolicy(backend="sparse", options={"cdf_threshold": 1.0}, dense_first_steps=1)
    out = pipe(PROMPTS[:1], seeds=[0], guidance=1.0, attention=policy, **KW)
    pipe(PROMPTS[:1], seeds=[0], guidance=1.0, **KW)
    hook.remove()
    assert orders == [True] * 4 + [False] * 4  # dense steps of the sparse run too; raster afterwards
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # the step cache's path (threshold 0: every step computed) restores raster order as well
    cached = pipe(
        PROMPTS[:1],
        seeds=[0],
        guidance=1.0,
        attention=policy,
        cache=StepCacheConfig(enabled=True, threshold=0.0),
        **KW,
    )
    torch.testing.assert_close(cached, ref, atol=1e-5, rtol=0)


def test_bad_sizes_are_clear_errors(tiny_parts):
    pipe = _pipe(tiny_parts)
    with pytest.raises(Exception, match="multiples"):
        pipe(PROMPTS[:1], seeds=[0], steps=2, frames=4, height=30, width=32)
    with pytest.raises(ValueError, match="seeds"):
        pipe(PROMPTS, seeds=[0], steps=2)


_DIST_SCRIPT = """
import json
import sys
from pathlib import Path

import importlib.util

spec = importlib.util.spec_from_file_location("sample_test_helpers", {test_file!r})
helpers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(helpers)
from pipelines.sample import sample_to_folder
from vdiff.config import load_config
from vdiff.encoders import PixelAutoencoder
from vdiff.parallel.distributed import destroy_distributed
from vdiff.sampling import SampleConfig, make_pipeline, setup_distributed

# NOTE: one launch samples every layout (process start-up dominates the cost); each rank
# writes into its own folder, so the test sees which ranks wrote files.
for name, overrides in json.loads(sys.argv[2]).items():
    cfg = load_config(SampleConfig, None, overrides)
    rank, groups = setup_distributed(cfg.parallel)
    pipe = make_pipeline(
        helpers.tiny_transformer(), helpers.ByteTextEncoder(), PixelAutoencoder(4), cfg=cfg, groups=groups
    )
    sample_to_folder(pipe, {prompts!r}, cfg, Path(sys.argv[1]) / name / f"rank{{rank}}", rank=rank)
    stats = Path(sys.argv[1]) / "cache_stats" / f"{{name}}-rank{{rank}}.json"
    stats.parent.mkdir(exist_ok=True)
    stats.write_text(json.dumps(pipe.last_cache_stats))
# NOTE: leave the process group as pipelines.sample.main does: a rank that exits with its gloo
# groups alive can abort in their destructors ('terminate called without an active exception').
destroy_distributed()
"""
# NOTE: 3 × 40 × 40 pixels -> 3 × 5 × 5 = 75 tokens: odd, so 2-way sequence parallelism pads.
DIST_ARGS = [
    "save_arrays=true",
    "progress=false",
    "steps=3",
    "frames=3",
    "height=40",
    "width=40",
    "guidance=3.0",
]
# NOTE: relative changes are ~0.3 a step here: threshold 0.5 skips some middle steps, not all.
CACHE_ARGS = ["steps=5", "cache.enabled=true", "cache.threshold=0.5"]
# NOTE: after the Ulysses all-to-all a rank attends over all 75 tokens with half the heads;
# 32-token blocks give 3 K blocks per Q block, of which topk 0.5 keeps 2. NOTE: kernel torch, since
# on a CPU kernel auto runs dense SDPA below 2048 keys (vdiff.attention.execute.dense_is_faster).
SPARSE_ARGS = [
    "attention.backend=sparse_sage",
    "attention.options={q_block: 32, k_block: 32, topk: 0.5, kernel: torch}",
]


def _one_process(out, overrides: list[str]) -> tuple[int, int] | None:
    from pipelines.sample import sample_to_folder
    from vdiff.config import load_config
    from vdiff.sampling import SampleConfig

    cfg = load_config(SampleConfig, None, overrides)
    pipe = VideoPipeline(
        transformer=tiny_transformer(), text_encoder=ByteTextEncoder(), vae=PixelAutoencoder(4)
    )
    sample_to_folder(pipe, PROMPTS, cfg, out)
    return pipe.last_cache_stats


def _torchrun(out, *, nproc: int, layouts: dict[str, list[str]]) -> None:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = out / "run_sample.py"
    out.mkdir(parents=True, exist_ok=True)
    script.write_text(_DIST_SCRIPT.format(test_file=str(Path(__file__).resolve()), prompts=PROMPTS))
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    res = subprocess.run(
        [*cmd, str(script), str(out), json.dumps(layouts)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]


def _assert_same_videos(one, many, *, world: int) -> None:
    """Rank 0 wrote every mp4 and the 1-process videos within 1e-4; the other ranks wrote nothing."""
    import numpy as np

    for prompt in PROMPTS:
        assert (many / "rank0" / f"{prompt}-0.mp4").is_file()
        a = np.load(one / f"{prompt}-0.npy")
        b = np.load(many / "rank0" / f"{prompt}-0.npy")
        assert a.shape == b.shape == (3, 40, 40, 3)
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=0)
    for r in range(1, world):
        assert not (many / f"rank{r}").exists() or not any((many / f"rank{r}").iterdir())


TWO_RANK_LAYOUTS = {
    "cfg": ["parallel.cfg=2"],
    "ulysses": ["parallel.ulysses=2"],
    "ring": ["parallel.ring=2"],
    "ulysses_cache": ["parallel.ulysses=2", *CACHE_ARGS],
    "ulysses_sparse": ["parallel.ulysses=2", *SPARSE_ARGS],
}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The 1-process videos and those of 2 gloo ranks for each layout of TWO_RANK_LAYOUTS."""
    root = tmp_path_factory.mktemp("two_ranks")
    stats = {
        "plain": _one_process(root / "one", DIST_ARGS),
        "cache": _one_process(root / "one_cache", [*DIST_ARGS, *CACHE_ARGS]),
        "sparse": _one_process(root / "one_sparse", [*DIST_ARGS, *SPARSE_ARGS]),
    }
    _torchrun(root / "two", nproc=2, layouts={k: [*DIST_ARGS, *v] for k, v in TWO_RANK_LAYOUTS.items()})
    return root, stats


@pytest.mark.dist
@pytest.mark.parametrize("layout", ["cfg", "ulysses", "ring"])
def test_two_ranks_equal_one_rank(two_ranks, layout):
    """2 gloo ranks (cfg: cond/uncond branch per rank; ulysses/ring: half the tokens each, padded)
    write the 1-process videos within 1e-4 (fp32, CPU), and only rank 0 writes files."""
    root, _ = two_ranks
    _assert_same_videos(root / "one", root / "two" / layout, world=2)


@pytest.mark.dist
def test_step_cache_under_ulysses_decides_like_one_process(two_ranks):
    """The skip decisions use the real tokens only (no padding) and agree across the ranks."""
    import json

    root, stats = two_ranks
    computed, skipped = stats["cache"]
    assert skipped > 0 and computed > 4, "the threshold must make the 1-process run skip some steps, not all"
    for rank in (0, 1):
        got = json.loads((root / "two" / "cache_stats" / f"ulysses_cache-rank{rank}.json").read_text())
        assert tuple(got) == stats["cache"]
    _assert_same_videos(root / "one_cache", root / "two" / "ulysses_cache", world=2)


@pytest.mark.dist
def test_sparse_attention_under_ulysses_equals_one_process(two_ranks):
    """sparse_sage on the middle steps: each rank's heads get the 1-process block masks."""
    import numpy as np

    root, _ = two_ranks
    _assert_same_videos(root / "one_sparse", root / "two" / "ulysses_sparse", world=2)
    dense = np.load(root / "one" / f"{PROMPTS[0]}-0.npy")
    sparse = np.load(root / "one_sparse" / f"{PROMPTS[0]}-0.npy")
    assert np.abs(dense - sparse).max() > 1e-4, "the sparse run must differ from dense to test anything"


@pytest.mark.dist
@pytest.mark.slow
def test_cfg_times_ulysses_four_ranks_equal_one_rank(tmp_path):
    """4 gloo ranks, parallel.cfg=2 × ulysses=2: the 1-process videos within 1e-4; rank 0 writes."""
    _one_process(tmp_path / "one", DIST_ARGS)
    _torchrun(
        tmp_path / "four",
        nproc=4,
        layouts={"cfg_ulysses": [*DIST_ARGS, "parallel.cfg=2", "parallel.ulysses=2"]},
    )
    _assert_same_videos(tmp_path / "one", tmp_path / "four" / "cfg_ulysses", world=4)


def _fake_run(root, tiny_parts):
    """A vdiff training-run folder whose EMA weights differ from its raw weights."""
    from vdiff.checkpoint import save_checkpoint
    from vdiff.config import load_config, save_config
    from vdiff.training import TrainConfig

    model = tiny_parts[0]
    ema = tiny_transformer_copy(model)
    overrides = [
        "model.in_channels=48",
        "model.out_channels=48",
        "model.num_heads=2",
        "model.head_dim=16",
        "model.ffn_dim=64",
        "model.num_layers=2",
        "model.text_dim=384",
        "model.freq_dim=32",
        "text.max_length=16",
        "vae.kind=pixel",
        "vae.patch=4",
    ]
    save_config(load_config(TrainConfig, None, overrides), root / "config.yaml")
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(root / "checkpoints", step=3, model=model, optimizer=opt, ema=ema)
    return model, ema


def tiny_transformer_copy(model):
    import copy

    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.9)
    return ema


def test_cli_samples_a_training_run_with_ema_weights_and_vbench_names(tmp_path, tiny_parts):
    from pipelines.sample import main

    _, ema = _fake_run(tmp_path / "run", tiny_parts)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\n\na blue square moving up\n")
    args = ["--model", str(tmp_path / "run"), "--prompts", str(prompts), "--out", str(tmp_path / "out")]
    keys = ["steps=2", "frames=4", "videos_per_prompt=2", "save_arrays=true", "progress=false"]
    assert main([*args, *keys]) == 0
    names = sorted(p.name for p in (tmp_path / "out").glob("*.mp4"))
    assert names == [f"{p}-{i}.mp4" for p in sorted(PROMPTS) for i in range(2)]
    assert (tmp_path / "out" / "sample_config.yaml").is_file()
    # the EMA weights were used: video 1 of prompt 0 (seed 1) equals the in-process EMA pipeline's
    import numpy as np

    _, text, vae = tiny_parts
    pipe = VideoPipeline(transformer=ema, text_encoder=text, vae=vae)
    ref = pipe(PROMPTS[:1], seeds=[1], steps=2, frames=4)
    got = np.load(tmp_path / "out" / f"{PROMPTS[0]}-1.npy")  # (T, H, W, 3)
    np.testing.assert_allclose(got, ref[0].permute(1, 2, 3, 0).numpy(), atol=1e-5, rtol=0)


def test_cli_errors_name_the_problem(tmp_path, capsys):
    from pipelines.sample import main

    assert main(["--model", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o")]) == 2
    assert "not a vdiff training run" in capsys.readouterr().err
    assert main(["--model", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o"), "stepz=3"]) == 2
    assert "did you mean steps" in capsys.readouterr().err


def test_prompts_file_takes_a_vbench_suite_and_refuses_a_file_map(tmp_path):
    import json

    from pipelines.sample import read_prompts
    from vdiff.config import ConfigError

    suite = [
        {"prompt_en": "a red circle moving left", "dimension": ["color"]},
        {"prompt_en": "a blue square moving up", "dimension": "object_class"},
        {"prompt_en": "a red circle moving left", "dimension": ["subject_consistency"]},
    ]
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    # NOTE: VBench lists a prompt once per dimension; it is sampled (and named) once.
    assert read_prompts(["a green star"], str(tmp_path / "suite.json")) == ["a green star", *PROMPTS]
    (tmp_path / "map.json").write_text(json.dumps({"x-0.mp4": "a red circle"}))
    with pytest.raises(ConfigError, match="names files"):
        read_prompts(None, str(tmp_path / "map.json"))


@pytest.mark.parametrize(
    ("prompt", "message"), [("a cat / a dog", "cannot be a VBench file name"), ("x" * 300, "255-byte")]
)
def test_prompts_that_cannot_be_file_names_fail_before_sampling(tmp_path, capsys, prompt, message):
    from pipelines.sample import main

    # NOTE: the names are checked before the model is even looked for.
    args = [
        "--model",
        str(tmp_path / "run"),
        "--prompt",
        "fine",
        "--prompt",
        prompt,
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_progress_bars_on_rank_0_only(tmp_path, capsys):
    from pipelines.sample import sample_to_folder
    from vdiff.sampling import SampleConfig

    pipe = VideoPipeline(
        transformer=tiny_transformer(), text_encoder=ByteTextEncoder(), vae=PixelAutoencoder(4)
    )
    cfg = SampleConfig(steps=2, frames=2, guidance=1.0)
    sample_to_folder(pipe, PROMPTS[:1], cfg, tmp_path / "r0")
    err = capsys.readouterr().err
    # NOTE: the per-step bar is cleared when done (leave=False); the videos bar stays.
    assert "denoising" in err and "videos" in err and "1/1" in err
    sample_to_folder(pipe, PROMPTS[:1], cfg, tmp_path / "r1", rank=1)
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "r1").exists()


def test_default_attention_is_dense_and_overrides_keep_the_sampling_policy():
    """The config loader once built ``attention`` from AttentionPolicy's class defaults
    (sparse_sage, 2 dense first steps), so `vdiff sample` ran sparse attention by default."""
    from pathlib import Path

    from vdiff.config import describe, load_config
    from vdiff.sampling import SampleConfig, dense_policy

    assert load_config(SampleConfig, None, []).attention == dense_policy()
    assert (
        load_config(
            SampleConfig, Path(__file__).resolve().parents[2] / "configs" / "sample.yaml", []
        ).attention
        == dense_policy()
    )
    sparse = load_config(SampleConfig, None, ["attention.backend=sparse_sage"]).attention
    assert (sparse.backend, sparse.dense_first_steps, sparse.dense_last_steps) == ("sparse_sage", 1, 1)
    assert "attention.backend (str, default 'sdpa')" in "\n".join(describe(SampleConfig))


def test_bad_values_and_an_out_file_are_one_line_errors_before_any_work(tmp_path, capsys):
    from pipelines.sample import main

    out_file = tmp_path / "out.mp4"
    out_file.write_bytes(b"")
    base = ["--model", str(tmp_path), "--prompt", "x"]
    for args, message in [
        (
            [*base, "--out", str(tmp_path / "o"), "guidance=.nan"],
            "guidance: expected a finite number, got nan",
        ),
        ([*base, "--out", str(tmp_path / "o"), "fps=0"], "fps must be > 0, got 0.0"),
        ([*base, "--out", str(tmp_path / "o"), "cache.threshold=-1"], "cache.threshold must be >= 0"),
        ([*base, "--out", str(out_file)], f"--out {out_file} is a file"),
    ]:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("vdiff sample: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
