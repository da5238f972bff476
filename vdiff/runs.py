"""Training runs as models: rebuild a run's VideoDiT from its config and a checkpoint, and export it.

A **training run** is the folder ``vdiff train`` writes: ``config.yaml`` (the resolved training
config; its ``seed``, ``init_from``, ``model``, ``ema`` and ``lora`` sections are read here) and
``checkpoints/step_{step:08d}/`` (torch.distributed.checkpoint folders with ``model``, ``ema`` and
``optim`` entries, see :mod:`vdiff.checkpoint`). A full fine-tune's checkpoints hold every
weight; a LoRA run's (``lora.rank > 0``) hold only the adapters, so its base is rebuilt as
training built it: ``init_from``'s weights, or the seeded init of ``model.*``. Only the chosen
entry (``model`` or ``ema``) is read, through :func:`vdiff.checkpoint.load_state`, never the
optimizer state.

    model = load_run_model("runs/tiny", weights="ema").model         # latest complete checkpoint
    export_run("runs/tiny", "out/tiny-diffusers", to="diffusers")    # WanTransformer3DModel folder
    export_run("runs/lora", "out/lora", to="diffusers", lora_adapters=True)  # load_lora_weights file
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from torch.distributed.checkpoint.api import CheckpointException

from vdiff.checkpoint import checkpoint_keys, latest_checkpoint, load_state
from vdiff.config import ConfigError, read_yaml_mapping
from vdiff.models.config import ModelConfig
from vdiff.models.dit import build_model
from vdiff.models.io import WEIGHTS_NAME, load_model, save_model
from vdiff.models.lora import DIFFUSERS_LORA_NAME, add_lora, merge_lora, save_diffusers_lora
from vdiff.models.wan import config_to_diffusers

RUN_CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
Weights = Literal["auto", "ema", "model"]
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


@dataclass(frozen=True)
class LoRASettings:
    """The adapters a LoRA run trained (its ``lora`` config section)."""

    rank: int
    """adapter rank r"""
    alpha: float
    """the update is (alpha / rank) · B·A"""
    dropout: float
    """dropout on the adapters' input (training only)"""
    target_modules: tuple[str, ...]
    """module names (peft's rule: the full name ends with .NAME) that carry adapters"""


@dataclass(frozen=True)
class RunInfo:
    """What a run's ``config.yaml`` says about the model it trained."""

    path: Path
    """the run folder"""
    model: ModelConfig
    """the architecture (``model`` section)"""
    seed: int
    """the seed of the model init (a LoRA run's base without ``init_from``)"""
    init_from: str
    """the model folder the run started from; empty: the seeded init"""
    ema: bool
    """whether checkpoints hold EMA weights (``ema.enabled``)"""
    lora: LoRASettings | None
    """the adapters of a LoRA run; None for a full fine-tune"""


@dataclass
class TrainedModel:
    """A run's model rebuilt from one checkpoint, in eval mode on the CPU."""

    model: torch.nn.Module
    """a VideoDiT (peft LoRA layers still in it when loaded with ``merge=False``)"""
    run: RunInfo
    checkpoint: Path
    """the step_{step:08d} folder read"""
    step: int
    weights: Literal["ema", "model"]
    """which weights of the checkpoint: the EMA or the raw trained weights"""


def is_run(path: str | Path) -> bool:
    """True for a folder that looks like a training run (``config.yaml`` or ``checkpoints/``)."""
    path = Path(path)
    return (path / RUN_CONFIG).is_file() or (path / CHECKPOINTS).is_dir()


def _section(raw: dict[str, Any], name: str, source: Path) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {name} must be a mapping, got {value!r}")
    return value


def read_run(path: str | Path) -> RunInfo:
    """The model-related settings of the training run at ``path`` (from its ``config.yaml``)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"training run {path} does not exist")
    cfg_path = path / RUN_CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{cfg_path} does not exist: {path} is not a complete vdiff training run "
            "(vdiff train writes config.yaml and checkpoints/)"
        )
    raw = read_yaml_mapping(cfg_path)
    try:
        model = ModelConfig.from_dict(_section(raw, "model", cfg_path))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cfg_path}: bad model section: {e}") from e
    seed, init_from = raw.get("seed", 0), raw.get("init_from", "") or ""
    ema = _section(raw, "ema", cfg_path).get("enabled", True)
    if not isinstance(seed, int) or not isinstance(init_from, str) or not isinstance(ema, bool):
        raise ConfigError(
            f"{cfg_path}: expected an integer seed, a string init_from and a boolean ema.enabled; got "
            f"seed={seed!r}, init_from={init_from!r}, ema.enabled={ema!r}"
        )
    lora_raw = _section(raw, "lora", cfg_path)
    lora = None
    if lora_raw.get("rank", 0):
        try:
            lora = LoRASettings(
                rank=int(lora_raw["rank"]),
                alpha=float(lora_raw["alpha"]),
                dropout=float(lora_raw.get("dropout", 0.0)),
                target_modules=tuple(str(t) for t in lora_raw["target_modules"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"{cfg_path}: lora section needs rank, alpha and target_modules ({type(e).__name__}: {e})"
            ) from e
    return RunInfo(path=path, model=model, seed=seed, init_from=init_from, ema=ema, lora=lora)


def checkpoint_steps(run: str | Path) -> list[int]:
    """The steps of ``run``'s complete checkpoints (``step_{step:08d}`` with ``.metadata``), ascending."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = ((_STEP_DIR.match(p.name), p) for p in root.iterdir())
    return sorted(int(m.group(1)) for m, p in found if m and (p / ".metadata").is_file())


def find_checkpoint(run: str | Path, step: int | None = None) -> Path:
    """``run``'s checkpoint folder of ``step`` (None: the latest complete one); errors name the folder."""
    root = Path(run) / CHECKPOINTS
    if step is None:
        found = latest_checkpoint(root)
        if found is None:
            raise FileNotFoundError(
                f"{root} holds no complete checkpoint (a step_{{step:08d}} folder with .metadata); "
                "train until one is written (checkpoint.every, and at the end of a run)"
            )
        return found
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    path = root / f"step_{step:08d}"
    if not (path / ".metadata").is_file():
        steps = checkpoint_steps(run)
        have = ", ".join(str(s) for s in steps) if steps else "none"
        raise FileNotFoundError(
            f"{path} is not a complete checkpoint; complete checkpoint steps in {root}: {have}"
        )
    return path


def _base_model(info: RunInfo) -> torch.nn.Module:
    """A LoRA run's base, built as training built it (``init_from``, or the seeded init)."""
    # NOTE: the seeded init draws from the global generator; fork it so the caller's stays as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(info.seed)
        if not info.init_from:
            return build_model(info.model)
        if not Path(info.init_from).exists():
            raise FileNotFoundError(
                f"{info.path / RUN_CONFIG}: init_from={info.init_from} does not exist (from {Path.cwd()}); "
                "a LoRA run's checkpoints hold only the adapters, so its base must be where training "
                "read it: run from the folder training ran in, or put the base model back there"
            )
        model = load_model(info.init_from, dtype=torch.float32, attention=info.model.attention)
    wrong = info.model.mismatches(model.config, other="init_from")
    if wrong:
        raise ValueError(
            f"{info.path / RUN_CONFIG}: init_from={info.init_from} is now another architecture "
            f"({', '.join(wrong)}); put the run's base model back there"
        )
    return model


def resolve_weights(info: RunInfo, weights: Weights) -> Literal["ema", "model"]:
    """``auto`` -> ``ema`` when the run kept an EMA, else ``model``; ``ema`` without one is an error."""
    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights must be auto, ema or model, got {weights!r}")
    if weights == "auto":
        return "ema" if info.ema else "model"
    if weights == "ema" and not info.ema:
        raise ValueError(
            f"{info.path} trained with ema.enabled=false: its checkpoints hold no EMA weights; "
            "use weights=model (--weights model)"
        )
    return weights


def _first_line(e: BaseException) -> str:
    """The line of DCP's many-line exception that names the cause (a missing key, a size)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    named = [ln for ln in lines if "key" in ln.lower() or "size" in ln.lower() or "shape" in ln.lower()]
    return (named or lines or [type(e).__name__])[0][:300]


def _check_holds(ckpt: Path, weights: str) -> None:
    """Refuse a checkpoint without a ``weights`` entry (EMA weights of a run without EMA)."""
    if not any(k.startswith(f"{weights}.") for k in checkpoint_keys(ckpt)):
        raise ValueError(f"{ckpt} holds no {weights!r} weights; use weights=model (--weights model)")


def load_trained_weights(
    model: torch.nn.Module, ckpt: Path, *, weights: Literal["ema", "model"], trainable_only: bool = True
) -> None:
    """Load the ``weights`` entry (``ema`` or ``model``) of checkpoint ``ckpt`` into ``model`` in place.

    ``trainable_only`` (a LoRA run's checkpoints hold only the adapters): read the parameters that
    require grad and leave the others as they are; else every entry of ``model``'s state dict.
    Only that entry is read, never the optimizer state.
    """
    _check_holds(ckpt, weights)
    wanted = model.state_dict()
    if trainable_only:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        wanted = {k: v for k, v in wanted.items() if k in trainable}
    state = {weights: wanted}
    try:
        load_state(state, ckpt, no_dist=True)
    except CheckpointException as e:
        described = ckpt.parent.parent / RUN_CONFIG  # NOTE: checkpoints are RUN/checkpoints/step_N
        raise ValueError(f"{ckpt} does not fit the model {described} describes ({_first_line(e)})") from e
    model.load_state_dict(state[weights], strict=not trainable_only)


def _load(info: RunInfo, ckpt: Path, weights: Literal["ema", "model"], *, base: bool) -> torch.nn.Module:
    """The run's model with checkpoint ``ckpt``'s ``weights`` entry loaded (LoRA layers unmerged).

    ``base=False`` leaves a LoRA run's base weights uninitialised (``init_from`` is not read): for
    writing the adapters alone, never for running the model.
    """
    _check_holds(ckpt, weights)
    if info.lora is None or not base:
        # NOTE: these weights all come from the checkpoint: allocate without initialising (a 14B
        # init is minutes).
        model = build_model(info.model, device="meta").to_empty(device="cpu")
    else:
        model = _base_model(info)
    if info.lora is not None:
        try:
            model = add_lora(
                model,
                rank=info.lora.rank,
                alpha=info.lora.alpha,
                dropout=info.lora.dropout,
                target_modules=info.lora.target_modules,
            )
        except ValueError as e:
            raise ValueError(f"{info.path / RUN_CONFIG}: lora.target_modules: {e}") from e
    # NOTE: LoRA checkpoints hold the trainable parameters (the adapters) and their EMA only.
    load_trained_weights(model, ckpt, weights=weights, trainable_only=info.lora is not None)
    return model.requires_grad_(False).eval()


def load_run_model(
    run: str | Path, *, weights: Weights = "auto", step: int | None = None, merge: bool = True
) -> TrainedModel:
    """``run``'s model at checkpoint ``step`` (None: the latest complete one) with ``weights``.

    A LoRA run's adapters are folded into its base unless ``merge=False``. Only the ``weights``
    entry of the checkpoint is read (not the optimizer state), into a model allocated once.
    """
    info = read_run(run)
    chosen = resolve_weights(info, weights)
    ckpt = find_checkpoint(info.path, step)
    model = _load(info, ckpt, chosen, base=True)
    if info.lora is not None and merge:
        model = merge_lora(model)
    return TrainedModel(model=model, run=info, checkpoint=ckpt, step=_step_of(ckpt), weights=chosen)


def export_run(
    run: str | Path,
    out: str | Path,
    *,
    to: Literal["vdiff", "diffusers"] = "vdiff",
    weights: Weights = "auto",
    step: int | None = None,
    lora_adapters: bool = False,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``run``'s model (LoRA merged) as a vdiff or diffusers model folder; return a summary.

    ``lora_adapters`` (LoRA runs, ``to="diffusers"``): write only the adapters, as
    ``out/pytorch_lora_weights.safetensors`` for ``WanPipeline.load_lora_weights``. Everything
    the export needs is checked before a checkpoint is read or a file written.
    """
    info = read_run(run)
    if to not in ("vdiff", "diffusers"):
        raise ValueError(f"cannot export to {to!r}; choose 'vdiff' or 'diffusers'")
    if lora_adapters and info.lora is None:
        raise ValueError(
            f"{info.path} is a full fine-tune (lora.rank=0 in {info.path / RUN_CONFIG}): it has no LoRA "
            "adapters to export; drop --lora-adapters to export the whole model"
        )
    if lora_adapters and to != "diffusers":
        raise ValueError("LoRA adapters are written in diffusers' layout only; use --to diffusers")
    if to == "diffusers":
        config_to_diffusers(info.model)  # NOTE: raises for what diffusers' Wan cannot describe
    chosen = resolve_weights(info, weights)
    ckpt = find_checkpoint(info.path, step)
    dst = Path(out)
    if dst.resolve() == info.path.resolve() or info.path.resolve() in dst.resolve().parents:
        raise ValueError(f"destination {dst} is inside the run {info.path}; pick a folder outside it")
    marker = dst / (DIFFUSERS_LORA_NAME if lora_adapters else "config.json")
    if marker.exists() and not overwrite:
        raise FileExistsError(f"{marker} already exists; pass overwrite=True (--overwrite) to replace it")

    if lora_adapters:
        # NOTE: the adapters alone need no base weights, so init_from need not be on this machine.
        model = _load(info, ckpt, chosen, base=False)
        file = save_diffusers_lora(model, dst, dtype=dtype)
        fmt = "diffusers-lora"
    else:
        model = _load(info, ckpt, chosen, base=True)
        if info.lora is not None:
            model = merge_lora(model)
        folder = save_model(model, dst, to=to, dtype=dtype)
        file = folder / f"{WEIGHTS_NAME[to]}.safetensors"
        fmt = to
    with safe_open(str(file), framework="pt") as f:
        tensors = len(list(f.keys()))
    return {
        "source": str(info.path),
        "checkpoint": str(ckpt),
        "step": _step_of(ckpt),
        "weights": chosen,
        "lora": None if info.lora is None else ("adapters" if lora_adapters else "merged"),
        "destination": str(dst),
        "format": fmt,
        "tensors": tensors,
        "bytes": file.stat().st_size,
        "files": 1,
    }


def merge_run(run: str | Path, out: str | Path, *, weights: Weights = "auto") -> Path:
    """Write LoRA run ``run``'s latest checkpoint, adapters folded into the base, as a vdiff model folder.

    ``weights``: ``ema``, ``model`` (the raw weights) or ``auto`` (EMA when the run kept one). The
    base is rebuilt as training built it (``init_from``, or the seeded init), so ``init_from``
    must still be there. The result loads with :func:`vdiff.models.load_model`.
    """
    if read_run(run).lora is None:
        raise ConfigError(f"{run} trained without LoRA (lora.rank=0): its checkpoints hold the whole model")
    return save_model(load_run_model(run, weights=weights).model, out)


def _step_of(ckpt: Path) -> int:
    m = _STEP_DIR.match(ckpt.name)
    if m is None:  # pragma: no cover - find_checkpoint returns step_ folders only
        raise ValueError(f"{ckpt} is not a step_{{step:08d}} folder")
    return int(m.group(1))
