"""LoRA adapters on a VideoDiT: merging, and the diffusers LoRA file checked with diffusers' own loader."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel

from vdiff.models import convert_checkpoint, save_model
from vdiff.models.lora import add_lora, diffusers_lora_state_dict, merge_lora, save_diffusers_lora

TARGETS = ("self_attn.q", "self_attn.o", "cross_attn.k", "ffn.fc1", "ffn.fc2")


def adapted(model: torch.nn.Module, randomize) -> torch.nn.Module:
    """``model`` with rank-3, alpha-12 adapters (scale 4) whose A and B are both random."""
    model = add_lora(model, rank=3, alpha=12.0, dropout=0.0, target_modules=TARGETS)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:  # NOTE: peft starts B at zero; a random B makes the update visible
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def test_diffusers_lora_file_gives_the_adapter_models_output(tiny, randomize, inputs, tmp_path):
    save_model(tiny, tmp_path / "base")
    convert_checkpoint(tmp_path / "base", tmp_path / "base-diffusers", to="diffusers")
    model = adapted(tiny, randomize)
    state = diffusers_lora_state_dict(model)
    assert "transformer.blocks.1.attn1.to_out.0.lora_B.weight" in state and len(state) == 2 * 5 * 2
    file = save_diffusers_lora(model, tmp_path / "lora")
    assert file == tmp_path / "lora" / "pytorch_lora_weights.safetensors"

    x, t, c = inputs
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        scheduler=None,
        transformer=WanTransformer3DModel.from_pretrained(tmp_path / "base-diffusers").eval(),
    )
    with torch.no_grad():
        before = pipe.transformer(x, t, c, return_dict=False)[0]
        # NOTE: weight_name named: diffusers < 0.40 refuses a folder without it under HF_HUB_OFFLINE
        pipe.load_lora_weights(str(tmp_path / "lora"), weight_name=file.name)
        want = model(x, t, c)
        got = pipe.transformer(x, t, c, return_dict=False)[0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert (got - before).abs().max() > 1e-3  # the adapters (scale alpha/r = 4) took effect
        merged = merge_lora(model)
        assert not any(".lora_" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(x, t, c), want, atol=1e-5, rtol=0)


def test_a_model_without_adapters_has_no_lora_file(tiny, tmp_path):
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_diffusers_lora(tiny, tmp_path / "lora")
    assert not (tmp_path / "lora").exists()
