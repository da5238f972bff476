"""Text encoders: bundled MiniLM and a tiny random UMT5 built offline, padded and masked like Wan."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, UMT5Config, UMT5EncoderModel

from vdiff.encoders import TextEncoderConfig, build_text_encoder, minilm_path

# NOTE: the crafted-file helpers live in the checkpoint tests' conftest; import it as a module.
ROOT = str(Path(__file__).resolve().parents[3])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PROMPTS = ["a red circle moving left", "", "a very long prompt " * 20]


def test_minilm_default_gives_masked_fixed_length_embeddings() -> None:
    enc = build_text_encoder(TextEncoderConfig(max_length=16))
    out = enc.encode(PROMPTS)
    assert out.shape == (3, 16, 384) and out.dtype == torch.float32 and enc.dim == 384
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    model = AutoModel.from_pretrained(str(minilm_path())).eval()
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt, truncation=True, max_length=16, return_tensors="pt")["input_ids"]
        n = ids.shape[1]
        with torch.no_grad():
            ref = model(input_ids=ids).last_hidden_state[0]  # (n, 384), unpadded
        torch.testing.assert_close(out[i, :n], ref, rtol=1e-4, atol=1e-4)
        assert torch.all(out[i, n:] == 0)
    assert (out[2].abs().sum(-1) > 0).all()  # truncated prompt fills all 16 positions


def test_tiny_umt5_encoder_loads_offline_and_masks_padding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tok_src = minilm_path()
    cfg = UMT5Config(vocab_size=30522, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
    model = UMT5EncoderModel(cfg).eval()
    root = tmp_path / "wan" / "text_encoder"
    model.save_pretrained(root)
    # diffusers layout: the tokenizer sits next to the encoder
    shutil.copytree(tok_src, tmp_path / "wan" / "tokenizer", ignore=shutil.ignore_patterns("*.safetensors"))
    enc = build_text_encoder(TextEncoderConfig(path=str(root), max_length=12))
    assert type(enc.model).__name__ == "UMT5EncoderModel" and enc.dim == 16
    out = enc.encode(PROMPTS[:2])
    tok = AutoTokenizer.from_pretrained(str(tok_src))
    batch = tok(PROMPTS[:2], padding="max_length", max_length=12, return_tensors="pt")
    with torch.no_grad():
        ref = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).last_hidden_state
    ref = ref * batch["attention_mask"][..., None]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.all(out[1, 2:] == 0) and (out[1, :2].abs().sum(-1) > 0).all()


def test_missing_text_encoder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"text\.path"):
        build_text_encoder(TextEncoderConfig(path=str(tmp_path)))


def test_a_text_encoder_folder_with_its_own_code_is_refused_without_asking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.vdiff.checkpoint.conftest import custom_code_folder

    asked: list[tuple] = []
    monkeypatch.setattr("builtins.input", lambda *a: asked.append(a) or "y")  # a user who would say yes
    marker = tmp_path / "MARKER"
    folder = custom_code_folder(minilm_path(), tmp_path / "encoder", marker)
    with pytest.raises(ValueError, match="trust_remote_code"):
        build_text_encoder(TextEncoderConfig(path=str(folder)))
    assert not marker.exists() and not asked
