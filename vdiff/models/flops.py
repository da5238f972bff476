"""FLOPs of a VideoDiT from its config, peak FLOP/s of accelerators, and model FLOPs utilisation.

Counted: every matrix product (2 FLOPs per multiply-add), i.e. the linear layers, the patch
embedding (a strided Conv3d, one matmul per token) and attention's two products ``q kᵀ`` and
``p v``, dense, for self-attention over the N latent tokens and cross-attention to the L text
tokens. Not counted (O(tokens x dim), under 1 % of a block at Wan2.1 widths): norms, RoPE,
softmax, activations, modulation and residual adds, and bias adds.

Backward is twice the forward for every product (the gradient of the input and of the weight),
except that layers whose input needs no gradient (the patch embedding on the latents, the
first linear of the time and of the text MLP) compute the weight gradient only. That is what
autograd runs for a full fine-tune; activation-checkpoint recomputation is not counted (MFU
counts the model's FLOPs, not the hardware's), and a sparse attention backend is counted as dense.

    fwd = forward_flops(cfg, tokens=32760, text_len=512)          # one sample
    step = train_flops(cfg, tokens=32760, text_len=512) * batch   # forward + backward
    utilisation = mfu(step / seconds, peak_flops("NVIDIA H100 80GB HBM3") * n_gpus)
"""

from __future__ import annotations

import math
import os

from vdiff.models.config import ModelConfig

PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("RTX 4090", 165.2),
)
"""dense (no 2:4 sparsity) bf16 tensor-core TFLOP/s with fp32 accumulation, from NVIDIA's data
sheets; matched as substrings of ``torch.cuda.get_device_name()``, first match wins (so the
PCIe/NVL parts come before their SXM names)"""

PEAK_ENV = "VDIFF_PEAK_TFLOPS"
"""environment variable that overrides the table (TFLOP/s of one device)"""


def forward_breakdown(cfg: ModelConfig, *, tokens: int, text_len: int) -> dict[str, int]:
    """Matmul FLOPs of one sample's forward pass, by component, for ``tokens`` latent tokens.

    ``tokens`` is N = T'·H'·W' after patching; ``text_len`` is L, the text embeddings' length.
    """
    n, seq, d, f = tokens, text_len, cfg.dim, cfg.ffn_dim
    patch = cfg.in_channels * math.prod(cfg.patch_size)
    per_layer = {
        "self_attn_proj": 2 * 4 * n * d * d,  # q, k, v, o
        "self_attn_sdpa": 2 * 2 * n * n * d,  # q kᵀ and p v over all heads
        "cross_attn_proj": 2 * 2 * n * d * d + 2 * 2 * seq * d * d,  # q, o on tokens; k, v on text
        "cross_attn_sdpa": 2 * 2 * n * seq * d,
        "ffn": 2 * 2 * n * d * f,
    }
    out = {k: v * cfg.num_layers for k, v in per_layer.items()}
    out["patch_embed"] = 2 * n * patch * d
    out["time_embed"] = 2 * (cfg.freq_dim * d + d * d + d * 6 * d)  # time MLP and time_proj: once
    out["text_embed"] = 2 * seq * (cfg.text_dim * d + d * d)
    out["head"] = 2 * n * d * cfg.out_channels * math.prod(cfg.patch_size)
    return out


def forward_flops(cfg: ModelConfig, *, tokens: int, text_len: int) -> int:
    """Matmul FLOPs of one sample's forward pass (see :func:`forward_breakdown`)."""
    return sum(forward_breakdown(cfg, tokens=tokens, text_len=text_len).values())


def backward_flops(cfg: ModelConfig, *, tokens: int, text_len: int) -> int:
    """Matmul FLOPs of one sample's backward pass of a full fine-tune (2x forward, less input grads
    of the three layers fed by inputs that need none)."""
    d = cfg.dim
    no_input_grad = (
        2 * tokens * cfg.in_channels * math.prod(cfg.patch_size) * d  # patch embedding
        + 2 * cfg.freq_dim * d  # time MLP's fc1 on the sinusoidal features
        + 2 * text_len * cfg.text_dim * d  # text MLP's fc1 on the text embeddings
    )
    return 2 * forward_flops(cfg, tokens=tokens, text_len=text_len) - no_input_grad


def train_flops(cfg: ModelConfig, *, tokens: int, text_len: int) -> int:
    """Matmul FLOPs of one sample's training step (forward + backward; no recomputation)."""
    return forward_flops(cfg, tokens=tokens, text_len=text_len) + backward_flops(
        cfg, tokens=tokens, text_len=text_len
    )


def peak_flops(device_name: str, *, override_tflops: float = 0.0) -> float | None:
    """Dense bf16 peak FLOP/s of one device called ``device_name``, or None if unknown.

    ``override_tflops`` > 0 wins, then the ``VDIFF_PEAK_TFLOPS`` environment variable, then
    :data:`PEAK_BF16_TFLOPS` by name. A CPU has no entry (its peak depends on the part and the
    cores in use): set the override to get an MFU there.
    """
    if override_tflops > 0:
        return override_tflops * 1e12
    env = os.environ.get(PEAK_ENV, "").strip()
    if env:
        try:
            value = float(env)
        except ValueError:
            raise ValueError(
                f"{PEAK_ENV}={env!r} is not a number; set it to one device's TFLOP/s, e.g. 989"
            ) from None
        if value <= 0:
            raise ValueError(f"{PEAK_ENV}={env!r} must be > 0 (TFLOP/s of one device)")
        return value * 1e12
    for name, tflops in PEAK_BF16_TFLOPS:
        if name.lower() in device_name.lower():
            return tflops * 1e12
    return None


def mfu(flops_per_s: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of the devices that ran them."""
    if peak_flops_per_s <= 0:
        raise ValueError(f"peak FLOP/s must be > 0, got {peak_flops_per_s}")
    return flops_per_s / peak_flops_per_s
