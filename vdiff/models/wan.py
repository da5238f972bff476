"""Wan2.1 compatibility: config and weight names of diffusers' ``WanTransformer3DModel`` and of
the original Wan repository's ``WanModel`` (Wan-AI/Wan2.1-T2V-*, non-diffusers) <-> vdiff.

The maps are pure functions on names and dicts (no tensors), so conversion can stream a
checkpoint shard by shard (see :mod:`vdiff.models.io`).
"""

from __future__ import annotations

import re
from typing import Any

from vdiff.models.config import ModelConfig

DIFFUSERS_CLASS = "WanTransformer3DModel"

# NOTE: (vdiff module path, diffusers module path); "{i}" is a block index. A key maps when it is
# the path itself or the path followed by ".weight"/".bias"/... (the rest is carried over).
_ATTN = [
    ("q", "to_q"),
    ("k", "to_k"),
    ("v", "to_v"),
    ("o", "to_out.0"),
    ("norm_q", "norm_q"),
    ("norm_k", "norm_k"),
]
NAME_MAP: list[tuple[str, str]] = [
    ("embed.patch", "patch_embedding"),
    ("embed.time_embed.fc1", "condition_embedder.time_embedder.linear_1"),
    ("embed.time_embed.fc2", "condition_embedder.time_embedder.linear_2"),
    ("embed.time_proj", "condition_embedder.time_proj"),
    ("embed.text_embed.fc1", "condition_embedder.text_embedder.linear_1"),
    ("embed.text_embed.fc2", "condition_embedder.text_embedder.linear_2"),
    *[(f"blocks.{{i}}.self_attn.{a}", f"blocks.{{i}}.attn1.{b}") for a, b in _ATTN],
    *[(f"blocks.{{i}}.cross_attn.{a}", f"blocks.{{i}}.attn2.{b}") for a, b in _ATTN],
    ("blocks.{i}.norm2", "blocks.{i}.norm2"),
    ("blocks.{i}.ffn.fc1", "blocks.{i}.ffn.net.0.proj"),
    ("blocks.{i}.ffn.fc2", "blocks.{i}.ffn.net.2"),
    ("blocks.{i}.modulation", "blocks.{i}.scale_shift_table"),
    ("unembed.proj", "proj_out"),
    ("unembed.modulation", "scale_shift_table"),
]


def _compile(pattern: str) -> re.Pattern[str]:
    body = re.escape(pattern).replace(re.escape("{i}"), r"(?P<i>\d+)")
    return re.compile(rf"^{body}(?P<rest>(\..+)?)$")


_TO_DIFFUSERS = [(_compile(a), b) for a, b in NAME_MAP]
_TO_VDIFF = [(_compile(b), a) for a, b in NAME_MAP]


def _rename(key: str, table: list[tuple[re.Pattern[str], str]], direction: str) -> str:
    for pattern, template in table:
        m = pattern.match(key)
        if m:
            name = template.replace("{i}", m.group("i")) if "{i}" in template else template
            return name + m.group("rest")
    raise KeyError(f"weight {key!r} has no {direction} name; is this a Wan2.1 text-to-video transformer?")


# NOTE: (vdiff module path, original Wan module path). The original names the cross-attention
# norm ``norm3`` and has no params in its FFN norm ``norm2``; vdiff follows diffusers' order.
WAN_NAME_MAP: list[tuple[str, str]] = [
    ("embed.patch", "patch_embedding"),
    ("embed.time_embed.fc1", "time_embedding.0"),
    ("embed.time_embed.fc2", "time_embedding.2"),
    ("embed.time_proj", "time_projection.1"),
    ("embed.text_embed.fc1", "text_embedding.0"),
    ("embed.text_embed.fc2", "text_embedding.2"),
    *[
        (f"blocks.{{i}}.{kind}.{a}", f"blocks.{{i}}.{kind}.{a}")
        for kind in ("self_attn", "cross_attn")
        for a, _ in _ATTN
    ],
    ("blocks.{i}.norm2", "blocks.{i}.norm3"),
    ("blocks.{i}.ffn.fc1", "blocks.{i}.ffn.0"),
    ("blocks.{i}.ffn.fc2", "blocks.{i}.ffn.2"),
    ("blocks.{i}.modulation", "blocks.{i}.modulation"),
    ("unembed.proj", "head.head"),
    ("unembed.modulation", "head.modulation"),
]
_WAN_TO_VDIFF = [(_compile(b), a) for a, b in WAN_NAME_MAP]
_VDIFF_TO_WAN = [(_compile(a), b) for a, b in WAN_NAME_MAP]


def wan_to_vdiff_key(key: str) -> str:
    """Original Wan ``blocks.3.ffn.0.weight`` -> ``blocks.3.ffn.fc1.weight``; unknown names raise KeyError."""
    return _rename(key, _WAN_TO_VDIFF, "vdiff")


def vdiff_to_wan_key(key: str) -> str:
    """``blocks.3.ffn.fc1.weight`` -> original Wan ``blocks.3.ffn.0.weight``."""
    return _rename(key, _VDIFF_TO_WAN, "original Wan")


def diffusers_to_vdiff_key(key: str) -> str:
    """``blocks.3.attn1.to_q.weight`` -> ``blocks.3.self_attn.q.weight``; unknown names raise KeyError."""
    return _rename(key, _TO_VDIFF, "vdiff")


def vdiff_to_diffusers_key(key: str) -> str:
    """``blocks.3.self_attn.q.weight`` -> ``blocks.3.attn1.to_q.weight``; unknown names raise KeyError."""
    return _rename(key, _TO_DIFFUSERS, "diffusers")


# (diffusers config key, ModelConfig field)
_CONFIG_MAP = [
    ("patch_size", "patch_size"),
    ("num_attention_heads", "num_heads"),
    ("attention_head_dim", "head_dim"),
    ("in_channels", "in_channels"),
    ("out_channels", "out_channels"),
    ("text_dim", "text_dim"),
    ("freq_dim", "freq_dim"),
    ("ffn_dim", "ffn_dim"),
    ("num_layers", "num_layers"),
    ("cross_attn_norm", "cross_attn_norm"),
    ("qk_norm", "qk_norm"),
    ("eps", "eps"),
    ("rope_max_seq_len", "rope_max_seq_len"),
]
# NOTE: image-to-video Wan checkpoints add an image encoder branch that vdiff does not implement.
_UNSUPPORTED = ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")


def is_diffusers_config(config: dict[str, Any]) -> bool:
    """True for the config.json of a diffusers WanTransformer3DModel."""
    return config.get("_class_name") == DIFFUSERS_CLASS


def config_from_diffusers(config: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
    """ModelConfig equivalent to a diffusers WanTransformer3DModel config dict."""
    if config.get("_class_name", DIFFUSERS_CLASS) != DIFFUSERS_CLASS:
        raise ValueError(
            f"{source}: _class_name is {config.get('_class_name')!r}, expected {DIFFUSERS_CLASS!r}"
        )
    used = [k for k in _UNSUPPORTED if config.get(k) is not None]
    if used:
        raise ValueError(
            f"{source}: {', '.join(f'{k}={config[k]}' for k in used)} describes an image-to-video Wan model; "
            "vdiff converts text-to-video Wan2.1 transformers only"
        )
    defaults = ModelConfig()
    kwargs: dict[str, Any] = {}
    for dkey, field in _CONFIG_MAP:
        value = config.get(dkey)
        kwargs[field] = getattr(defaults, field) if value is None else value
    if config.get("out_channels") is None:
        kwargs["out_channels"] = kwargs["in_channels"]
    kwargs["patch_size"] = tuple(kwargs["patch_size"])
    cfg = ModelConfig(**kwargs)
    cfg.validate()
    return cfg


def config_to_diffusers(cfg: ModelConfig, *, diffusers_version: str | None = None) -> dict[str, Any]:
    """The diffusers WanTransformer3DModel config dict for ``cfg`` (``from_pretrained`` reads it)."""
    if cfg.abs_pos_embed:
        raise ValueError(
            "diffusers' WanTransformer3DModel has no absolute position embedding; "
            "this model has abs_pos_embed=True"
        )
    if cfg.rope_theta != 10000.0:
        raise ValueError(
            f"diffusers' WanTransformer3DModel fixes rope_theta=10000; this model has {cfg.rope_theta}"
        )
    out: dict[str, Any] = {"_class_name": DIFFUSERS_CLASS}
    if diffusers_version is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            diffusers_version = version("diffusers")
        except PackageNotFoundError:
            diffusers_version = "0.33.0"
    out["_diffusers_version"] = diffusers_version
    for dkey, field in _CONFIG_MAP:
        value = getattr(cfg, field)
        out[dkey] = list(value) if isinstance(value, tuple) else value
    for k in _UNSUPPORTED:
        out[k] = None
    return out


WAN_CLASS = "WanModel"


def is_wan_config(config: dict[str, Any]) -> bool:
    """True for the config.json of an original Wan repository transformer (``WanModel``)."""
    return config.get("_class_name") == WAN_CLASS


def config_from_wan(config: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
    """ModelConfig equivalent to an original Wan ``WanModel`` config (Wan-AI/Wan2.1-T2V-*)."""
    model_type = config.get("model_type", "t2v")
    if model_type != "t2v":
        raise ValueError(
            f"{source}: model_type={model_type!r}; vdiff converts text-to-video (t2v) Wan2.1 models only"
        )
    missing = [k for k in ("dim", "num_heads", "ffn_dim", "num_layers") if k not in config]
    if missing:
        raise ValueError(f"{source}: WanModel config lacks {missing}")
    if list(config.get("window_size", (-1, -1))) != [-1, -1]:
        raise ValueError(f"{source}: window_size={config['window_size']} (local attention) is not supported")
    if not config.get("qk_norm", True) or not config.get("cross_attn_norm", True):
        raise ValueError(f"{source}: qk_norm and cross_attn_norm must be true (as in every Wan2.1 model)")
    dim, heads = int(config["dim"]), int(config["num_heads"])
    if dim % heads:
        raise ValueError(f"{source}: dim={dim} is not divisible by num_heads={heads}")
    cfg = ModelConfig(
        in_channels=int(config.get("in_dim", 16)),
        out_channels=int(config.get("out_dim", 16)),
        patch_size=tuple(config.get("patch_size", (1, 2, 2))),
        num_heads=heads,
        head_dim=dim // heads,
        ffn_dim=int(config["ffn_dim"]),
        num_layers=int(config["num_layers"]),
        text_dim=int(config.get("text_dim", 4096)),
        freq_dim=int(config.get("freq_dim", 256)),
        eps=float(config.get("eps", 1e-6)),
    )
    cfg.validate()
    return cfg
