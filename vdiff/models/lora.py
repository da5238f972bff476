"""LoRA adapters on a VideoDiT (through peft): add them, fold them in, write them for diffusers.

A **diffusers LoRA file** is what ``WanPipeline.load_lora_weights(FOLDER)`` (and
``WanTransformer3DModel.load_lora_adapter``) reads: ``pytorch_lora_weights.safetensors`` with
keys ``transformer.<diffusers module>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r).
Without adapter metadata diffusers builds its ``LoraConfig`` from the shapes with
``lora_alpha = r`` (scale 1), so the file carries ``(alpha / r) · B``: the update ``B·A`` a
reader applies is then exactly the one vdiff trained, whatever the reader assumes about alpha.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vdiff.models.wan import vdiff_to_diffusers_key

DIFFUSERS_LORA_NAME = "pytorch_lora_weights.safetensors"
"""the file name diffusers' ``load_lora_weights`` looks for in a folder"""
DIFFUSERS_LORA_PREFIX = "transformer"
"""the pipeline component WanPipeline's LoRA keys start with"""


def add_lora(
    model: torch.nn.Module, *, rank: int, alpha: float, dropout: float, target_modules: Sequence[str]
) -> torch.nn.Module:
    """Add peft LoRA adapters (adapter ``default``) to ``target_modules`` in place; freeze the rest.

    ``target_modules`` follows peft's rule: a module matches when its full name ends with ``.NAME``.
    Raises ValueError (peft's message) when no module matches.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
    return inject_adapter_in_model(config, model)


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{module name: peft LoraLayer}`` of ``model`` (empty when it has no adapters)."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every adapter into its base weight (W ← W + (alpha/r)·B·A) and drop the adapters."""
    for name, module in lora_layers(model).items():
        module.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def diffusers_lora_state_dict(
    model: torch.nn.Module, *, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The adapters of ``model`` under diffusers' WanTransformer3DModel names, scale folded into B.

    ``blocks.0.self_attn.q`` (lora_A, lora_B, scaling s) becomes
    ``transformer.blocks.0.attn1.to_q.lora_A.weight`` = A and ``....lora_B.weight`` = s·B.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to write")
    out: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        adapters = list(layer.lora_A)
        if adapters != ["default"] or layer.use_dora.get("default") or layer.lora_bias.get("default"):
            raise ValueError(
                f"{name}: only one plain LoRA adapter ('default', no DoRA, no bias) can be written for "
                f"diffusers; this layer has adapters {adapters}"
            )
        a = layer.lora_A["default"].weight.detach()
        b = layer.lora_B["default"].weight.detach() * layer.scaling["default"]
        key = f"{DIFFUSERS_LORA_PREFIX}.{vdiff_to_diffusers_key(name)}"
        for part, t in (("lora_A", a), ("lora_B", b)):
            t = t.to("cpu").contiguous()
            out[f"{key}.{part}.weight"] = t if dtype is None else t.to(dtype)
    return out


def save_diffusers_lora(
    model: torch.nn.Module, path: str | Path, *, dtype: torch.dtype | None = None
) -> Path:
    """Write ``model``'s adapters as ``path/pytorch_lora_weights.safetensors``; return the file."""
    from vdiff.models.io import save_safetensors

    state = diffusers_lora_state_dict(model, dtype=dtype)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / DIFFUSERS_LORA_NAME
    save_safetensors(state, file)
    return file
