"""Training checkpoints: torch.distributed.checkpoint (DCP) folders that any mesh can reload.

``RUN/checkpoints/step_{step:08d}/`` holds a DCP checkpoint of ``{"model", "optim", "ema"}`` (sharded
tensors stay sharded, so a run saved on one mesh reloads on another) plus
``trainer/rank-NNNNN.json`` per rank with the step, the data loader position and the random
generator states (base64), which differ per rank. With ``trainable_only`` (LoRA runs) the model,
EMA and optimizer entries cover only the parameters that train; the frozen base weights are
rebuilt from the run's config. A checkpoint is written under
``step_{step:08d}.tmp`` and renamed when every rank has finished, so a killed run never leaves a
partial ``step_{step:08d}``; :func:`latest_checkpoint` ignores the temporary folders.

Checkpoints are read through :mod:`vdiff.checkpoint.safe` (:func:`load_state`, :func:`checkpoint_keys`):
a crafted ``.metadata`` or data file is refused with an :class:`UnsafeCheckpointError` instead of
running its code. Read a DCP checkpoint no other way.
"""

from __future__ import annotations

import base64
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from vdiff.checkpoint.check import (
    STEP_FOLDER,
    checkpoint_cause,
    checkpoint_problem,
    load_problem,
    step_folders,
)
from vdiff.checkpoint.safe import (
    UnsafeCheckpointError,
    checkpoint_keys,
    load_plain_weights,
    load_state,
    read_metadata,
)
from vdiff.io.files import atomic_write_json

__all__ = [
    "STEP_FOLDER",
    "UnsafeCheckpointError",
    "checkpoint_cause",
    "checkpoint_keys",
    "checkpoint_problem",
    "latest_checkpoint",
    "load_checkpoint",
    "load_plain_weights",
    "load_problem",
    "load_state",
    "read_metadata",
    "rng_from_json",
    "rng_to_json",
    "save_checkpoint",
    "step_folders",
]


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rng_to_json(state: torch.Tensor) -> str:
    """A generator state (uint8 tensor) as base64 text."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def rng_from_json(text: str) -> torch.Tensor:
    """Inverse of :func:`rng_to_json`."""
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def _options(trainable_only: bool) -> StateDictOptions:
    # NOTE: frozen parameters are left out; a partial model state must then load non-strictly.
    return StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)


def _state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: torch.nn.Module | None,
    *,
    trainable_only: bool = False,
) -> dict:
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(trainable_only))
    state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    if ema is not None:
        ema_sd = ema.state_dict()
        state["ema"] = {k: v for k, v in ema_sd.items() if k in model_sd} if trainable_only else ema_sd
    return state


def save_checkpoint(
    root: str | Path,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: torch.nn.Module | None = None,
    trainer_state: dict[str, Any] | None = None,
    trainable_only: bool = False,
) -> Path:
    """Write ``root/step_{step:08d}`` (every rank calls this); return its path.

    ``trainable_only``: keep only parameters with ``requires_grad`` (and their EMA), e.g. LoRA adapters.
    """
    root = Path(root)
    final, tmp = root / f"step_{step:08d}", root / f"step_{step:08d}.tmp"
    rank = _rank()
    if rank == 0 and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    with warnings.catch_warnings():
        # NOTE: DCP warns when saving without a process group; one process is a supported case.
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save(_state(model, optimizer, ema, trainable_only=trainable_only), checkpoint_id=str(tmp))
    atomic_write_json(tmp / "trainer" / f"rank-{rank:05d}.json", {"step": step, **(trainer_state or {})})
    _barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    _barrier()
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete ``step_{step:08d}`` folder with the largest N under ``root``, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := STEP_FOLDER.match(p.name)) and (p / ".metadata").is_file()
    ]
    return max(found)[1] if found else None


def _first_line(e: BaseException) -> str:
    """The first line of ``e`` that names a cause (e.g. "Missing key in checkpoint state_dict: ...")."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    named = [ln for ln in lines if "key" in ln.lower() or "size" in ln.lower() or "shape" in ln.lower()]
    return (named or lines or [type(e).__name__])[0][:300]


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: torch.nn.Module | None = None,
    trainable_only: bool = False,
) -> dict[str, Any]:
    """Load model, optimizer and EMA in place; return this rank's trainer state (with ``step``).

    ``trainable_only`` must match the save; the frozen parameters keep the values they have.
    """
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(
            f"{path} is not a complete checkpoint (no .metadata); pick another step_ folder"
        )
    state = _state(model, optimizer, ema, trainable_only=trainable_only)
    try:
        load_state(state, path)
    except CheckpointException as e:
        # NOTE: DCP's exception is a BaseException listing every rank's traceback; name the cause.
        raise ValueError(
            f"{path} does not fit this run's model/optimizer ({_first_line(e)}): resume with the "
            "model.*, optim.name/optim.* and lora.* settings of the run that wrote it, "
            "or start fresh with resume=none"
        ) from e
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=_options(trainable_only),
    )
    if ema is not None:
        ema.load_state_dict(state["ema"], strict=not trainable_only)
    rank_file = path / "trainer" / f"rank-{_rank():05d}.json"
    if not rank_file.is_file():
        # NOTE: resuming on more ranks than saved: new ranks start from rank 0's position.
        rank_file = path / "trainer" / "rank-00000.json"
    return json.loads(rank_file.read_text())
