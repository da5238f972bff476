"""``vdiff sample --model DIR`` on a tiny diffusers-format Wan2.1 folder built here, against
diffusers' own ``WanPipeline`` on the same folder.

The folder is what ``WanPipeline.save_pretrained`` writes (model_index.json, transformer/, vae/,
text_encoder/, tokenizer/, scheduler/) with tiny random weights: a ``WanTransformer3DModel``, an
``AutoencoderKLWan``, a ``UMT5EncoderModel`` and a byte-level BPE tokenizer trained offline on a
few sentences. Reference: ``WanPipeline`` from the same folder, same prompt, negative prompt,
initial noise, steps, guidance and scheduler. Tolerance: max abs difference < 1e-4 on the
decoded video in [-1, 1] (fp32, CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

PROMPT = "a red circle moving left"
NEGATIVE = "blurry, static"
SIZE = dict(frames=5, height=32, width=32)
TOKENIZER_CORPUS = [
    "a red circle moving left",
    "a blue square moving up over a green field",
    "a yellow triangle moving right, blurry and static",
    "low quality, worst quality, jpeg artifacts",
]


def tiny_tokenizer():
    """A byte-level BPE tokenizer (any text encodes; ``</s>`` appended like T5's), trained offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TOKENIZER_CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def write_tiny_wan(
    root: Path,
    *,
    seed: int = 0,
    num_layers: int = 2,
    num_heads: int = 2,
    head_dim: int = 12,
    text_dim: int = 32,
    vae_dim: int = 8,
) -> Path:
    """Write a tiny random diffusers Wan2.1 text-to-video folder to ``root``; return ``root``.

    Latents have 4 channels, the VAE compresses 4× in time and 8× in space, the scheduler is the
    UniPC configuration Wan2.1's diffusers folders ship (flow prediction, shift 3).
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=4,
        text_dim=text_dim,
        freq_dim=32,
        ffn_dim=2 * num_heads * head_dim,
        num_layers=num_layers,
        rope_max_seq_len=32,
    )
    vae = AutoencoderKLWan(
        base_dim=vae_dim,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[2.0, 0.5, 1.5, 1.0],
    )
    tokenizer = tiny_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=text_dim,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    pipe.save_pretrained(root)
    return root


def diffusers_reference(
    root: Path,
    *,
    prompt: str,
    negative_prompt: str,
    latents: torch.Tensor,
    steps: int,
    guidance: float,
    scheduler,
    frames: int,
    height: int,
    width: int,
) -> np.ndarray:
    """diffusers' WanPipeline from ``root`` with ``scheduler``: (T, H, W, 3) float32 in [-1, 1]."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(root, scheduler=scheduler, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    video = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt,
        latents=latents,
        num_inference_steps=steps,
        guidance_scale=guidance,
        num_frames=frames,
        height=height,
        width=width,
        output_type="np",
    ).frames[0]  # (T, H, W, 3) in [0, 1]
    return video.astype(np.float32) * 2 - 1


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory) -> Path:
    return write_tiny_wan(tmp_path_factory.mktemp("tiny_wan") / "Wan2.1-T2V-tiny")


def test_folder_is_what_diffusers_writes(wan_dir):
    index = json.loads((wan_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (wan_dir / part).is_dir() and part in index


# NOTE: euler's loop is also checked against a reference integration in test_sample.py (fast).
@pytest.mark.parametrize("sampler", ["unipc", pytest.param("euler", marks=pytest.mark.slow)])
def test_cli_samples_a_wan_folder_like_diffusers_wan_pipeline(wan_dir, tmp_path, sampler):
    """``vdiff sample --model DIR`` writes an mp4 of the requested frames and size, equal to
    WanPipeline's video within 1e-4 (same noise, negative prompt, guidance, steps, scheduler)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from pipelines.sample import main
    from vdiff.io.video import probe, read_frames
    from vdiff.sampling import initial_noise

    out = tmp_path / "out"
    keys = [
        "steps=3",
        "guidance=4.0",
        "shift=5.0",
        f"sampler={sampler}",
        "save_arrays=true",
        "progress=false",
    ]
    size = [f"{k}={v}" for k, v in SIZE.items()]
    args = ["--model", str(wan_dir), "--prompt", PROMPT, "--out", str(out), f"negative_prompt={NEGATIVE}"]
    assert main([*args, *keys, *size, "seed=7", "fps=12"]) == 0
    frames = read_frames(out / f"{PROMPT}-0.mp4")
    assert frames.shape == (5, 32, 32, 3) and probe(out / f"{PROMPT}-0.mp4").fps == pytest.approx(12)
    got = np.load(out / f"{PROMPT}-0.npy")  # (T, H, W, 3) in [-1, 1]

    if sampler == "euler":
        scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    else:
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
        )
    ref = diffusers_reference(
        wan_dir,
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        latents=initial_noise((4, 2, 4, 4), [7]),
        steps=3,
        guidance=4.0,
        scheduler=scheduler,
        **SIZE,
    )
    assert ref.shape == got.shape and ref.std() > 0.01
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    # the written mp4 is the same video up to 8-bit rounding and H.264
    assert np.abs(frames.astype(np.float32) / 127.5 - 1 - got).mean() < 0.05


def test_wan22_folders_are_refused_with_a_clear_error(wan_dir, tmp_path, capsys):
    """A two-expert Wan2.2 folder (transformer_2) must not be sampled with one expert silently."""
    import shutil

    from pipelines.sample import main

    other = tmp_path / "wan22"
    shutil.copytree(wan_dir, other)
    index = json.loads((other / "model_index.json").read_text())
    index["transformer_2"] = ["diffusers", "WanTransformer3DModel"]
    (other / "model_index.json").write_text(json.dumps(index))
    assert main(["--model", str(other), "--prompt", PROMPT, "--out", str(tmp_path / "o"), "steps=1"]) == 2
    assert "two-expert Wan2.2" in capsys.readouterr().err


def test_wan_folder_options_reach_the_components(wan_dir):
    """vae.tiling / vae.slicing / vae.dtype and text.dtype apply to a Wan folder's VAE and UMT5."""
    from vdiff.config import load_config
    from vdiff.sampling import SampleConfig, load_components

    keys = ["vae.tiling=true", "vae.slicing=true", "vae.dtype=bfloat16", "text.dtype=bfloat16"]
    transformer, text, vae = load_components(wan_dir, load_config(SampleConfig, None, keys))
    assert vae.vae.use_tiling and vae.vae.use_slicing and vae.dtype == torch.bfloat16
    assert next(text.model.parameters()).dtype == torch.bfloat16 and text.max_length == 512
    assert type(text.model).__name__ == "UMT5EncoderModel" and transformer.config.text_dim == 32
    _, text, vae = load_components(wan_dir, SampleConfig())
    assert not vae.vae.use_tiling and vae.dtype == torch.float32


def test_sizes_the_wan_vae_cannot_take_fail_before_sampling(wan_dir, tmp_path, capsys):
    from pipelines.sample import main

    args = ["--model", str(wan_dir), "--prompt", PROMPT, "--out", str(tmp_path / "o"), "progress=false"]
    assert main([*args, "frames=16"]) == 2  # Wan's VAE takes 1 + 4k frames
    assert "1 + a multiple of 4" in capsys.readouterr().err
    assert main([*args, "frames=5", "height=36"]) == 2
    assert "multiples of the VAE's compression 8" in capsys.readouterr().err
    assert main([*args, "frames=5", "height=40"]) == 2  # 5 latent rows, patch 2
    assert "not divisible by the patch size" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
