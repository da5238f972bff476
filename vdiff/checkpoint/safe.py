"""Reading DCP checkpoints without running code from their files.

torch.distributed.checkpoint's ``FileSystemReader`` reads a checkpoint's ``.metadata`` with a plain
``pickle.load``, and its ``DefaultLoadPlanner`` reads every non-tensor entry (the optimizer's
hyper-parameters, or any entry ``.metadata`` calls non-tensor) with
``torch.load(weights_only=False)``: a crafted file runs its author's code. Here:

- ``.metadata`` is read by an unpickler that admits only the globals DCP metadata is made of
  (:data:`ALLOWED_GLOBALS`: its dataclasses, ``torch.Size``, dtypes, layouts, paths) and must hold a
  ``Metadata`` whose data files are plain names inside the checkpoint folder;
- non-tensor entries are read with ``torch.load(weights_only=True)`` (torch's own allow-list:
  tensors, numbers, strings, tuples, lists, dicts).

Anything else is an :class:`UnsafeCheckpointError`, one line that names the file and the reason.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    StorageMeta,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import ReadItem

from vdiff.config import ConfigError

_DCP_METADATA_CLASSES = (
    "Metadata",
    "MetadataIndex",
    "StorageMeta",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "TensorProperties",
    "_MEM_FORMAT_ENCODING",
)
_PATH_CLASSES = ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("torch.distributed.checkpoint.metadata", name) for name in _DCP_METADATA_CLASSES}
    | {("torch.distributed.checkpoint.filesystem", "_StorageInfo")}
    # NOTE: torch releases before 2.3 pickled TensorProperties from the ShardedTensor module.
    | {
        ("torch.distributed._shard.sharded_tensor.metadata", n)
        for n in ("TensorProperties", "MEM_FORMAT_ENCODING")
    }
    | {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict")}
    # NOTE: StorageMeta.checkpoint_id is the Path saved to (module pathlib._local from Python 3.13).
    | {(module, name) for module in ("pathlib", "pathlib._local") for name in _PATH_CLASSES}
    | {("torch", name) for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
)
"""(module, name) of every global a DCP ``.metadata`` pickle may name; constructing any of them runs no
code of the file's choosing"""


class UnsafeCheckpointError(ConfigError):
    """A checkpoint file asks for more than a checkpoint needs (code, files outside it) or is not one.

    A ValueError (via ConfigError), so every command reports it as one line and exits 2.
    """


_TRUST = "the run was altered or not written by vdiff; get it again from a source you trust"


def _refuse(what: str | Path, why: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{what} {why}, which a checkpoint never needs; refusing to run code from a file ({_TRUST})"
    )


def _damaged(path: Path, why: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"checkpoint metadata {path} is not a torch.distributed.checkpoint index ({why}); "
        "the checkpoint is damaged: use another step_ folder"
    )


class _MetadataUnpickler(pickle.Unpickler):
    """An unpickler that builds only :data:`ALLOWED_GLOBALS`: a file's ``__reduce__`` calls nothing else."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise _refuse(f"checkpoint metadata {self.path}", f"asks to load {module}.{name}")
        return super().find_class(module, name)


_MALFORMED = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError)
"""what unpickling a truncated or foreign file raises"""


def _unpickle(path: Path) -> object:
    try:
        with open(path, "rb") as f:
            return _MetadataUnpickler(f, path).load()
    except UnsafeCheckpointError:
        raise
    except _MALFORMED as e:
        raise _damaged(path, f"{type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _is_plain_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _check(metadata: object, path: Path) -> Metadata:
    """``metadata`` if it is a DCP index whose entries are DCP's and whose data files lie in its folder."""
    if not isinstance(metadata, Metadata):
        raise _damaged(path, f"it holds a {type(metadata).__name__}")
    entries = metadata.state_dict_metadata
    kinds = (TensorStorageMetadata, BytesStorageMetadata)
    if not isinstance(entries, dict) or not all(
        isinstance(k, str) and isinstance(v, kinds) for k, v in entries.items()
    ):
        raise _damaged(path, "its entries are not DCP tensor or bytes entries")
    storage = metadata.storage_data
    if not isinstance(storage, dict) or not all(isinstance(v, _StorageInfo) for v in storage.values()):
        raise _damaged(path, "its storage data is not DCP's")
    for info in storage.values():
        if not _is_plain_name(info.relative_path):
            raise UnsafeCheckpointError(
                f"checkpoint metadata {path} names data file {info.relative_path!r}, which is not a file "
                f"of {path.parent}; refusing to read files outside a checkpoint ({_TRUST})"
            )
    return metadata


def read_metadata(path: str | Path) -> Metadata:
    """The DCP index in file ``path`` (a checkpoint's ``.metadata``), read without running code."""
    path = Path(path)
    return _check(_unpickle(path), path)


def checkpoint_keys(folder: str | Path) -> set[str]:
    """The state-dict keys (``model.…``, ``ema.…``, ``optim.…``) a checkpoint folder holds."""
    return set(read_metadata(Path(folder) / ".metadata").state_dict_metadata)


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader, with ``.metadata`` read by :func:`read_metadata`.

    The index is read (and refused) when the reader is made, so a refusal is raised on every rank
    before DCP's collectives start (DCP would otherwise log it and try per-rank metadata instead).
    """

    def __init__(self, folder: str | Path) -> None:
        super().__init__(str(folder))
        self.folder = Path(folder)
        self.metadata = read_metadata(self.folder / ".metadata")

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        metadata = self.metadata if rank is None else read_metadata(Path(self._get_metadata_path(rank)))
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, with non-tensor entries read by ``torch.load(weights_only=True)``."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__()
        self.folder = Path(folder)

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        key = read_item.dest_index.fqn
        try:
            entry = torch.load(value, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise _refuse(f"{self.folder}: entry {key}", _asks_for(e)) from None
        # NOTE: the parent's load_bytes unpickles without restriction; it gets the entry as vdiff
        # re-saves it from the safely read value, which holds only weights_only types.
        clean = io.BytesIO()
        torch.save(entry, clean)
        clean.seek(0)
        super().load_bytes(read_item, clean)


def _asks_for(error: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, e.g. ``asks to load exec``."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if found:
        return f"asks to load {found.group(1)}"
    found = re.search(r"WeightsUnpickler error: ([^\n]*)", str(error))
    return f"is not plain data ({(found.group(1) if found else _first_line(error))[:200]})"


def load_plain_weights(path: str | Path, *, what: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, never code.

    A file that asks for more is an :class:`UnsafeCheckpointError` naming ``what``, the file and the
    global it asked for (torch's own error spans a dozen lines).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refuse(f"{what} {path}", _asks_for(e)) from None


def _refusal(error: CheckpointException) -> UnsafeCheckpointError | None:
    """The refusal among the ranks' failures that DCP collected, if any."""
    for failure in error.failures.values():
        cause = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(cause, UnsafeCheckpointError):
            return cause
    return None


def load_state(state: dict[str, Any], folder: str | Path, *, no_dist: bool = False) -> None:
    """``dcp.load(state)`` from checkpoint ``folder`` (in place), reading nothing that runs code.

    Raises :class:`UnsafeCheckpointError` for a crafted or damaged file and DCP's
    ``CheckpointException`` when ``state`` does not fit the checkpoint.
    """
    reader = SafeFileSystemReader(folder)
    with warnings.catch_warnings():
        # NOTE: DCP warns when loading without a process group; one process is a supported case.
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        try:
            dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner(folder), no_dist=no_dist)
        except CheckpointException as e:
            refused = _refusal(e)
            if refused is not None:
                raise refused from None
            raise
