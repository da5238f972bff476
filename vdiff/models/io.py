"""Saving, loading and converting VideoDiT weights (vdiff and diffusers Wan2.1 folders).

A **vdiff model folder** holds ``config.json`` (``{"format": "vdiff.VideoDiT", "model": ModelConfig}``)
and ``model.safetensors`` (or shards ``model-0000i-of-0000n.safetensors`` with
``model.safetensors.index.json``). A **diffusers folder** is what
``WanTransformer3DModel.save_pretrained`` writes: ``config.json`` and
``diffusion_pytorch_model.safetensors`` (or shards plus an index). An **original Wan folder**
(Wan-AI/Wan2.1-T2V-*, ``config.json`` with ``_class_name: WanModel``) is read too. ``load_model``
reads all three; ``convert_checkpoint`` writes vdiff or diffusers folders one shard at a time, so
a 14B checkpoint is never held twice in memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vdiff.attention import AttentionConfig
from vdiff.io.files import atomic_path, atomic_write_json
from vdiff.models.config import ModelConfig
from vdiff.models.dit import VideoDiT, build_model
from vdiff.models.wan import (
    config_from_diffusers,
    config_from_wan,
    config_to_diffusers,
    diffusers_to_vdiff_key,
    is_diffusers_config,
    is_wan_config,
    vdiff_to_diffusers_key,
    wan_to_vdiff_key,
)

Format = Literal["vdiff", "diffusers", "wan"]
VDIFF_FORMAT = "vdiff.VideoDiT"
WEIGHTS_NAME: dict[str, str] = {
    "vdiff": "model",
    "diffusers": "diffusion_pytorch_model",
    "wan": "diffusion_pytorch_model",
}
_RENAME_TO_VDIFF: dict[str, Callable[[str], str]] = {
    "vdiff": lambda k: k,
    "diffusers": diffusers_to_vdiff_key,
    "wan": wan_to_vdiff_key,
}
_RENAME_FROM_VDIFF: dict[str, Callable[[str], str]] = {
    "vdiff": lambda k: k,
    "diffusers": vdiff_to_diffusers_key,
}


def model_folder(path: str | Path) -> Path:
    """The folder holding the transformer: ``path`` itself, or ``path/transformer`` of a pipeline folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    if not (path / "config.json").is_file() and (path / "transformer" / "config.json").is_file():
        return path / "transformer"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} has no config.json; expected a vdiff model folder (save_model, vdiff convert) "
            "or a diffusers WanTransformer3DModel folder (save_pretrained)"
        )
    return path


def read_config(path: str | Path) -> tuple[ModelConfig, Format]:
    """The ModelConfig of a vdiff or diffusers model folder, and which format the folder is in."""
    folder = model_folder(path)
    cfg_path = folder / "config.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from e
    if raw.get("format") == VDIFF_FORMAT:
        try:
            return ModelConfig.from_dict(raw["model"]), "vdiff"
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{cfg_path}: bad vdiff model config: {e}") from e
    if is_diffusers_config(raw):
        return config_from_diffusers(raw, source=str(cfg_path)), "diffusers"
    if is_wan_config(raw):
        return config_from_wan(raw, source=str(cfg_path)), "wan"
    raise ValueError(
        f"{cfg_path} is neither a vdiff model config (format={VDIFF_FORMAT!r}), a diffusers "
        f"WanTransformer3DModel config nor an original Wan WanModel config "
        f"(_class_name={raw.get('_class_name')!r})"
    )


def weight_files(folder: str | Path, fmt: Format) -> list[Path]:
    """The safetensors files of a model folder, in order (from the index json when sharded)."""
    folder = Path(folder)
    base = WEIGHTS_NAME[fmt]
    index = folder / f"{base}.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists weight files that do not exist: {missing}")
        return files
    if (folder / f"{base}.safetensors").is_file():
        return [folder / f"{base}.safetensors"]
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ValueError(
            f"{folder} holds pickled weights (.bin/.pt); vdiff reads safetensors only: "
            "re-save with save_pretrained(..., safe_serialization=True)"
        )
    raise FileNotFoundError(f"{folder} has no {base}.safetensors (nor a sharded {index.name})")


Shapes = dict[str, tuple[tuple[int, ...], Path]]


def _weight_shapes(files: list[Path], rename: Callable[[str], str]) -> Shapes:
    """vdiff key -> (shape, file) read from safetensors headers (no tensor data is loaded)."""
    out: Shapes = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                try:
                    name = rename(key)
                except KeyError as e:
                    raise ValueError(f"{file}: {e.args[0]}") from e
                out[name] = (tuple(f.get_slice(key).get_shape()), file)
    return out


def _check_weights(found: Shapes, model: VideoDiT, *, source: Path) -> None:
    """Raise a ValueError naming the files and keys when ``found`` does not fit ``model`` exactly."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{k} ({found[k][1].name}: {found[k][0]}, model: {expected[k]})"
        for k in sorted(set(found) & set(expected))
        if found[k][0] != expected[k]
    ]
    if not (missing or unexpected or mismatched):
        return

    def head(items: list[str]) -> str:
        return ", ".join(items[:10]) + (f" ... ({len(items)} in all)" if len(items) > 10 else "")

    parts = []
    if missing:
        parts.append(f"missing weights: {head(missing)}")
    if unexpected:
        parts.append(f"unexpected weights: {head([f'{k} ({found[k][1].name})' for k in unexpected])}")
    if mismatched:
        parts.append(f"shape mismatches: {head(mismatched)}")
    raise ValueError(
        f"weights in {source} do not match its config.json ({'; '.join(parts)}); "
        "the folder is incomplete or its config belongs to another model"
    )


def save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file under a temporary name (mode ``0o666 & ~umask``) and rename it into place."""
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata or {"format": "pt"})


def _vdiff_config_json(cfg: ModelConfig) -> dict[str, Any]:
    return {"format": VDIFF_FORMAT, "format_version": 1, "model": cfg.to_dict()}


def save_model(
    model: VideoDiT,
    path: str | Path,
    *,
    to: Literal["vdiff", "diffusers"] = "vdiff",
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` as a model folder; return the folder.

    ``to="vdiff"``: config.json + model.safetensors. ``to="diffusers"``: what
    ``WanTransformer3DModel.save_pretrained`` writes (config.json +
    diffusion_pytorch_model.safetensors), which ``from_pretrained`` loads. ``dtype`` casts the
    floating-point tensors.
    """
    if to not in ("vdiff", "diffusers"):
        raise ValueError(f"cannot save a model as {to!r}; choose 'vdiff' or 'diffusers'")
    # NOTE: checked before anything is written (abs_pos_embed and other rope_theta have no diffusers form).
    config = config_to_diffusers(model.config) if to == "diffusers" else _vdiff_config_json(model.config)
    rename = _RENAME_FROM_VDIFF[to]
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu")
        state[rename(k)] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
    save_safetensors(state, folder / f"{WEIGHTS_NAME[to]}.safetensors")
    # NOTE: the config goes last, so an interrupted save never looks like a complete folder.
    atomic_write_json(folder / "config.json", config)
    return folder


def load_model(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    attention: AttentionConfig | None = None,
) -> VideoDiT:
    """Load a VideoDiT (in eval mode) from a vdiff or a diffusers WanTransformer3DModel folder.

    Weights are read straight onto ``device`` (cast to ``dtype`` if given) into a model built on
    the meta device, so nothing is allocated twice. ``attention`` overrides the saved backends.
    """
    folder = model_folder(path)
    cfg, fmt = read_config(folder)
    if attention is not None:
        cfg.attention = attention
    files = weight_files(folder, fmt)
    rename = _RENAME_TO_VDIFF[fmt]
    model = build_model(cfg, device="meta", init=False)
    _check_weights(_weight_shapes(files, rename), model, source=folder)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for key in f.keys():  # noqa: SIM118
                t = f.get_tensor(key)
                state[rename(key)] = t if dtype is None else t.to(dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    to: Literal["vdiff", "diffusers"],
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert a model folder to format ``to`` shard by shard; return a summary dict.

    Each source shard becomes one output shard, so peak memory is one shard. Tensors are copied
    bit for bit unless ``dtype`` is given. The config is written last.
    """
    folder = model_folder(src)
    cfg, fmt = read_config(folder)
    if to not in ("vdiff", "diffusers"):
        raise ValueError(f"cannot convert to {to!r}; choose 'vdiff' or 'diffusers'")
    if fmt == to:
        raise ValueError(f"{folder} is already a {to} model folder; nothing to convert")
    files = weight_files(folder, fmt)
    to_vdiff, from_vdiff = _RENAME_TO_VDIFF[fmt], _RENAME_FROM_VDIFF[to]
    _check_weights(
        _weight_shapes(files, to_vdiff), build_model(cfg, device="meta", init=False), source=folder
    )

    out = Path(dst)
    if out.resolve() == folder.resolve():
        raise ValueError(f"source and destination are the same folder ({out}); pick another destination")
    if (out / "config.json").exists() and not overwrite:
        raise FileExistsError(
            f"{out / 'config.json'} already exists; pass overwrite=True (--overwrite) to replace it"
        )
    out.mkdir(parents=True, exist_ok=True)
    base, n = WEIGHTS_NAME[to], len(files)
    weight_map: dict[str, str] = {}
    total_bytes = 0
    for i, file in enumerate(files, start=1):
        name = f"{base}.safetensors" if n == 1 else f"{base}-{i:05d}-of-{n:05d}.safetensors"
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata()
            tensors = {}
            for key in f.keys():  # noqa: SIM118
                t = f.get_tensor(key)
                tensors[from_vdiff(to_vdiff(key))] = t if dtype is None else t.to(dtype)
        save_safetensors(tensors, out / name, metadata)
        weight_map.update(dict.fromkeys(tensors, name))
        total_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    if n > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_json(out / f"{base}.safetensors.index.json", index)
    config = config_to_diffusers(cfg) if to == "diffusers" else _vdiff_config_json(cfg)
    atomic_write_json(out / "config.json", config)
    return {
        "source": str(folder),
        "destination": str(out),
        "format": to,
        "tensors": len(weight_map),
        "bytes": total_bytes,
        "files": n,
    }
