"""eval.models.clip / eval.models.viclip: the published checkpoints' key layouts (listed here from
OpenAI's ``clip/model.py`` and VBench's ``vbench/third_party/ViCLIP``), strict loading, forward
shapes on random weights, and CLIP's BPE tokenizer."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from eval.models.clip import CLIP, BPETokenizer, clip_vit_b32, load_clip
from eval.models.viclip import load_viclip, viclip, viclip_tokenize

BLOCK_SHAPES = {  # one ResidualAttentionBlock of width D: nn.MultiheadAttention + ln_1 + mlp + ln_2
    "attn.in_proj_weight": lambda d: (3 * d, d),
    "attn.in_proj_bias": lambda d: (3 * d,),
    "attn.out_proj.weight": lambda d: (d, d),
    "attn.out_proj.bias": lambda d: (d,),
    "ln_1.weight": lambda d: (d,),
    "ln_1.bias": lambda d: (d,),
    "mlp.c_fc.weight": lambda d: (4 * d, d),
    "mlp.c_fc.bias": lambda d: (4 * d,),
    "mlp.c_proj.weight": lambda d: (d, 4 * d),
    "mlp.c_proj.bias": lambda d: (d,),
    "ln_2.weight": lambda d: (d,),
    "ln_2.bias": lambda d: (d,),
}


def blocks(prefix: str, layers: int, width: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.resblocks.{i}.{name}": shape(width)
        for i in range(layers)
        for name, shape in BLOCK_SHAPES.items()
    }


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_clip_vit_b32_has_openai_keys_and_shapes():
    # OpenAI ViT-B/32: embed 512, vision 12 x 768 (patch 32, 224 px -> 7x7 + 1 tokens), text 12 x 512, ctx 77.
    expected = {
        "visual.conv1.weight": (768, 3, 32, 32),
        "visual.class_embedding": (768,),
        "visual.positional_embedding": (50, 768),
        "visual.ln_pre.weight": (768,),
        "visual.ln_pre.bias": (768,),
        **blocks("visual.transformer", 12, 768),
        "visual.ln_post.weight": (768,),
        "visual.ln_post.bias": (768,),
        "visual.proj": (768, 512),
        **blocks("transformer", 12, 512),
        "token_embedding.weight": (49408, 512),
        "positional_embedding": (77, 512),
        "ln_final.weight": (512,),
        "ln_final.bias": (512,),
        "text_projection": (512, 512),
        "logit_scale": (),
    }
    with torch.device("meta"):
        model = clip_vit_b32()
    assert shapes(model) == expected
    assert model.visual.transformer.resblocks[0].attn.num_heads == 12
    assert model.transformer.resblocks[0].attn.num_heads == 8


def test_viclip_l14_has_vbench_keys_and_shapes():
    # VBench's clip_joint_l14 (1024 wide, 24 layers, patch 14, Conv3d kernel (1, 14, 14), 8 frames, proj 768)
    # and clip_text_l14 (768 wide, 12 layers, context max_txt_l = 32), plus ViCLIP.temp.
    v, t = "vision_encoder", "text_encoder"
    expected = {
        f"{v}.conv1.weight": (1024, 3, 1, 14, 14),
        f"{v}.class_embedding": (1024,),
        f"{v}.positional_embedding": (257, 1024),
        f"{v}.ln_pre.weight": (1024,),
        f"{v}.ln_pre.bias": (1024,),
        f"{v}.temporal_positional_embedding": (1, 8, 1024),
        **blocks(f"{v}.transformer", 24, 1024),
        f"{v}.ln_post.weight": (1024,),
        f"{v}.ln_post.bias": (1024,),
        f"{v}.proj": (1024, 768),
        **blocks(f"{t}.transformer", 12, 768),
        f"{t}.token_embedding.weight": (49408, 768),
        f"{t}.positional_embedding": (32, 768),
        f"{t}.ln_final.weight": (768,),
        f"{t}.ln_final.bias": (768,),
        f"{t}.text_projection": (768, 768),
        "temp": (),
    }
    with torch.device("meta"):
        model = viclip()
    assert shapes(model) == expected
    assert model.vision_encoder.transformer.resblocks[0].attn.num_heads == 16
    assert model.text_encoder.transformer.resblocks[0].attn.num_heads == 12


def tiny_clip(resolution: int = 224) -> CLIP:
    torch.manual_seed(0)
    return CLIP(
        embed_dim=16,
        image_resolution=resolution,
        vision_layers=1,
        vision_width=64,
        vision_patch_size=resolution // 2,
        context_length=77,
        vocab_size=600,
        transformer_width=128,  # heads = width // 64, as clip's build_model infers them
        transformer_heads=2,
        transformer_layers=1,
    )


def save_tiny_clip(path: Path, model: CLIP) -> Path:
    state = dict(model.state_dict())
    # the clip archive's integer extras, which clip.load drops before loading
    state |= {
        "input_resolution": torch.tensor(224),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(600),
    }
    torch.save(state, path)
    return path


def test_load_clip_strict_roundtrip_and_logits(tmp_path):
    model = tiny_clip().eval()
    loaded = load_clip(save_tiny_clip(tmp_path / "clip.pt", model))
    image = torch.randn(3, 3, 224, 224)
    text = torch.zeros(2, 77, dtype=torch.long)
    text[:, :3] = torch.tensor([[598, 5, 599], [598, 7, 599]])
    with torch.no_grad():
        per_image, per_text = loaded(image, text)
        img, txt = model.encode_image(image), model.encode_text(text)
    assert per_image.shape == (3, 2) and per_text.shape == (2, 3)
    assert loaded.encode_image(image).shape == (3, 16)
    cos = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    torch.testing.assert_close(per_text, 100.0 * cos.T, rtol=1e-3, atol=1e-3)  # exp(log 100) * cos


def test_load_clip_refuses_a_different_layout(tmp_path):
    state = tiny_clip().state_dict()
    state["visual.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"visual.extra"):
        load_clip(tmp_path / "bad.pt")


def tiny_viclip():
    torch.manual_seed(0)
    return viclip(
        patch_size=112,
        vision_width=32,
        vision_layers=1,
        vision_heads=2,
        embed_dim=16,
        vocab_size=600,
        text_width=32,
        text_heads=2,
        text_layers=1,
    )


def test_viclip_strict_load_under_model_key_and_forward(tmp_path):
    model = tiny_viclip().eval()
    torch.save({"model": model.state_dict()}, tmp_path / "viclip.pth")
    loaded = load_viclip(tmp_path / "viclip.pth", build=tiny_viclip)
    video = torch.randn(1, 8, 3, 224, 224)
    with torch.no_grad():
        assert loaded.encode_vision(video).shape == (1, 16)
        torch.testing.assert_close(loaded.encode_vision(video), model.encode_vision(video))
        tokens = torch.zeros(1, 32, dtype=torch.long)
        tokens[0, :2] = torch.tensor([598, 599])
        assert loaded.encode_text(tokens).shape == (1, 16)
    torch.save({"model": {"temp": torch.zeros(())}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="Missing key"):
        load_viclip(tmp_path / "bad.pth", build=tiny_viclip)


def test_viclip_temporal_embedding_is_added_per_frame():
    # Each patch token of frame t gets temporal_positional_embedding[t]; a single frame gets their mean.
    model = tiny_viclip().eval()
    enc = model.vision_encoder
    with torch.no_grad():
        enc.temporal_positional_embedding.zero_()
        video = torch.randn(1, 8, 3, 224, 224)
        base = model.encode_vision(video)
        enc.temporal_positional_embedding[0, 3] = 1.0
        assert not torch.allclose(model.encode_vision(video), base)
        single = model.encode_vision(video[:, :1])
        assert single.shape == (1, 16) and torch.isfinite(single).all()


def tiny_bpe(path: Path) -> Path:
    """A BPE file in CLIP's format: a header line, then merges by rank."""
    merges = ["h e", "l l", "he ll", "o</w>", "hell o</w>"]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges))  # no trailing newline: no empty merge
    return path


def test_bpe_tokenizer_matches_clip_vocab_layout(tmp_path):
    tok = BPETokenizer(tiny_bpe(tmp_path / "bpe.txt.gz"))
    # vocab = 256 byte chars + 256 with </w> + one entry per merge + sot + eot
    assert tok.encoder["<|startoftext|>"] == 512 + 5 and tok.encoder["<|endoftext|>"] == 512 + 6
    assert tok.encode("Hello") == [512 + 4]  # "hell" + "o</w>" merged: lower-cased first
    # "he" alone is h + e</w> (merge "h e" does not apply to "e</w>"); "," is its own word, ",</w>".
    # Printable ASCII c has id ord(c) - 33, and c + "</w>" has 256 more.
    assert tok.encode("  he,") == [ord("h") - 33, 256 + ord("e") - 33, 256 + ord(",") - 33]
    ids = tok.tokenize(["hello"], context_length=5)
    assert ids.tolist() == [[517, 516, 518, 0, 0]] and ids.dtype == torch.long
    with pytest.raises(ValueError, match="context length"):
        tok.tokenize(["hello hello hello hello"], context_length=5)
    cut = viclip_tokenize(tok, " ".join(["hello"] * 40))  # ViCLIP: 32 tokens, truncated, ends in eot
    assert cut.shape == (1, 32) and cut[0, -1] == 518 and cut[0, 0] == 517
    assert math.isclose(float(cut.argmax()), 31)
