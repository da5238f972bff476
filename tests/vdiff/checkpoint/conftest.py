"""Crafted files that create ``marker`` when a loader runs code from them.

Most helpers rewrite a checkpoint that vdiff wrote so that reading it the way
torch.distributed.checkpoint does (``pickle.load`` of ``.metadata``, ``torch.load(weights_only=False)``
of non-tensor entries) would create ``marker``; :func:`custom_code_folder` is a transformers folder
whose config asks to import its own Python file. A safe loader refuses the file and the marker
never appears. The pipeline, encoder, eval and curation tests import these helpers too.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, MetadataIndex


class RunsCode:
    """Pickles as a call of ``builtins.exec`` that creates ``marker``: what a crafted file holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def genuine_metadata(ckpt: Path) -> Metadata:
    """The index of a checkpoint this test wrote itself (so reading it with pickle is fine here)."""
    with open(ckpt / ".metadata", "rb") as f:
        return pickle.load(f)


def craft_metadata(ckpt: Path, marker: Path) -> Path:
    """Hide a code-running object inside the genuine ``.metadata``: loading still 'works' after it ran."""
    metadata = genuine_metadata(ckpt)
    metadata.storage_meta.save_id = RunsCode(marker)
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))
    return ckpt / ".metadata"


def craft_entry(ckpt: Path, key: str, marker: Path) -> None:
    """Make entry ``key`` a non-tensor value whose bytes (appended to a data file) run code.

    ``.metadata`` keeps only DCP's own classes, so this passes a metadata allow-list alone.
    """
    metadata = genuine_metadata(ckpt)
    data_file = sorted(ckpt.glob("*.distcp"))[0]
    payload = _torch_saved(RunsCode(marker))
    offset = data_file.stat().st_size
    with open(data_file, "ab") as f:
        f.write(payload)
    metadata.state_dict_metadata[key] = BytesStorageMetadata()
    storage = {i: s for i, s in metadata.storage_data.items() if i.fqn != key}
    storage[MetadataIndex(key)] = _StorageInfo(data_file.name, offset, len(payload))
    metadata.storage_data = storage
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))


def point_outside(ckpt: Path, key: str, relative_path: str) -> None:
    """Make the data of ``key`` live at ``relative_path`` (e.g. a file outside the checkpoint)."""
    metadata = genuine_metadata(ckpt)
    metadata.storage_data = {
        i: (_StorageInfo(relative_path, s.offset, s.length) if i.fqn == key else s)
        for i, s in metadata.storage_data.items()
    }
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))


def _torch_saved(obj: object) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def custom_code_folder(src: Path, dst: Path, marker: Path) -> Path:
    """A copy of transformers folder ``src`` whose config.json maps every Auto class to ``evil.py``.

    transformers imports ``evil.py`` (creating ``marker``) once it is trusted to run a folder's code;
    with ``trust_remote_code`` unset it asks on the terminal first.
    """
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    auto = ("AutoConfig", "AutoModel", "AutoProcessor", "AutoImageProcessor", "AutoModelForImageTextToText")
    config["auto_map"] = {name: f"evil.{name.replace('Auto', 'Evil')}" for name in auto}
    config["auto_map"]["AutoTokenizer"] = ["evil.EvilTokenizer", None]
    config["model_type"] = "evil-net"
    (dst / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer_config.json", "preprocessor_config.json", "processor_config.json"):
        if (dst / name).is_file():
            extra = json.loads((dst / name).read_text())
            extra["auto_map"] = config["auto_map"]
            (dst / name).write_text(json.dumps(extra))
    (dst / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return dst
