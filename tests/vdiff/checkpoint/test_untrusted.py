"""Loading a checkpoint never runs code from its files: crafted ones are refused, genuine ones load.

A downloaded run is untrusted input. torch.distributed.checkpoint reads ``.metadata`` with a plain
``pickle.load`` and non-tensor entries with ``torch.load(weights_only=False)``; each test here
crafts one of those files so that a plain read creates a marker file, and checks that vdiff
refuses it with one line naming the file and the reason, and that the marker never appears.
"""

from __future__ import annotations

import copy
import pickle
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from vdiff.checkpoint import load_checkpoint, save_checkpoint

# NOTE: the crafting helpers and the process launcher live in conftest modules; import them as modules.
ROOT = str(Path(__file__).resolve().parents[3])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from tests.vdiff.checkpoint.conftest import craft_entry, craft_metadata, point_outside  # noqa: E402
from tests.vdiff.parallel.conftest import spawn_gloo  # noqa: E402


def _trained(seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2)).to(dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 4, dtype=dtype)).square().mean().backward()
    opt.step()
    opt.zero_grad()
    return model, opt


def _checkpoint(tmp_path: Path) -> Path:
    model, opt = _trained(0)
    return save_checkpoint(tmp_path / "ckpt", step=3, model=model, optimizer=opt, ema=copy.deepcopy(model))


def _load(ckpt: Path) -> dict:
    model, opt = _trained(1)
    return load_checkpoint(ckpt, model=model, optimizer=opt, ema=copy.deepcopy(model))


def test_metadata_that_would_run_code_is_refused_before_it_runs(tmp_path: Path) -> None:
    ckpt, marker = _checkpoint(tmp_path), tmp_path / "MARKER"
    metadata = craft_metadata(ckpt, marker)
    with pytest.raises(ValueError) as err:
        _load(ckpt)
    assert not marker.exists()  # was created: DCP read .metadata with pickle.load
    line = str(err.value)
    assert "\n" not in line and str(metadata) in line
    assert re.search(r"asks to load builtins\.exec, which a checkpoint never needs; refusing", line)


@pytest.mark.parametrize("key", ["optim.param_groups.0.lr", "model.0.weight"])
def test_an_entry_whose_bytes_would_run_code_is_refused(tmp_path: Path, key: str) -> None:
    ckpt, marker = _checkpoint(tmp_path), tmp_path / "MARKER"
    craft_entry(ckpt, key, marker)  # .metadata holds DCP classes only; the data file holds the code
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(ckpt))}: entry {re.escape(key)} asks to load exec.*refusing"
    ):
        _load(ckpt)
    assert not marker.exists()  # was created: DCP read the entry with torch.load(weights_only=False)


@pytest.mark.parametrize("where", ["../secret.distcp", "/etc/hostname", "sub/__0_0.distcp"])
def test_metadata_naming_a_file_outside_the_checkpoint_is_refused(tmp_path: Path, where: str) -> None:
    ckpt = _checkpoint(tmp_path)
    shutil.copy(next(ckpt.glob("*.distcp")), tmp_path / "secret.distcp")
    point_outside(ckpt, "model.0.weight", where)
    with pytest.raises(
        ValueError, match=rf"names data file {re.escape(repr(where))}, which is not a file of .*refusing"
    ):
        _load(ckpt)


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"not a pickle", "not a torch.distributed.checkpoint index"), (pickle.dumps({}), "it holds a dict")],
)
def test_a_metadata_file_that_is_not_dcp_metadata_is_a_clear_error(
    tmp_path: Path, content: bytes, why: str
) -> None:
    ckpt = _checkpoint(tmp_path)
    (ckpt / ".metadata").write_bytes(content)
    with pytest.raises(ValueError, match=rf"{re.escape(str(ckpt / '.metadata'))} .*{why}"):
        _load(ckpt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("trainable_only", [False, True])
def test_genuine_checkpoints_load_through_the_safe_reader(
    tmp_path: Path, dtype: torch.dtype, trainable_only: bool
) -> None:
    from vdiff.checkpoint import checkpoint_keys

    model, opt = _trained(0, dtype)
    if trainable_only:  # a LoRA run: only some parameters train, and only those are saved
        model[0].requires_grad_(False)
    ema = copy.deepcopy(model)
    ckpt = save_checkpoint(
        tmp_path, step=2, model=model, optimizer=opt, ema=ema, trainable_only=trainable_only
    )
    saved = {"model.2.weight", "ema.2.weight", "optim.param_groups.0.lr"}
    assert saved <= checkpoint_keys(ckpt) and ("model.0.weight" in checkpoint_keys(ckpt)) != trainable_only
    m2, o2 = _trained(1, dtype)
    if trainable_only:
        m2[0].requires_grad_(False)
    e2 = copy.deepcopy(m2)
    assert load_checkpoint(ckpt, model=m2, optimizer=o2, ema=e2, trainable_only=trainable_only)["step"] == 2
    assert torch.equal(m2[2].weight, model[2].weight) and torch.equal(e2[2].bias, ema[2].bias)
    assert o2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert o2.param_groups[0]["betas"] == opt.param_groups[0]["betas"]


def _fsdp2_save_and_load(rank: int, world_size: int, root: str) -> list:
    """Two FSDP2 ranks: save (model, AdamW moments, sharded EMA), reload it, and try a crafted copy."""
    import torch.distributed as dist

    from vdiff.models import videodit_tiny
    from vdiff.optim import OptimConfig, build_optimizer
    from vdiff.optim.gather import whole
    from vdiff.parallel import build_mesh
    from vdiff.parallel.config import ParallelConfig
    from vdiff.parallel.parallelize import parallelize, shard_like_model, unwrap

    def build() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.nn.Module]:
        torch.manual_seed(0)
        cfg = ParallelConfig(dp_shard=2, param_dtype="float32")
        mesh = build_mesh(cfg, device_type="cpu")
        model = videodit_tiny(num_layers=1)
        ema = shard_like_model(copy.deepcopy(model).requires_grad_(False), mesh, cfg)
        model = parallelize(model, mesh, cfg)
        return model, build_optimizer(unwrap(model), OptimConfig(lr=0.01)), ema

    model, opt, ema = build()
    g = torch.Generator().manual_seed(rank)
    x, ctx, t = (
        torch.randn(1, 4, 2, 4, 4, generator=g),
        torch.randn(1, 5, 32, generator=g),
        torch.rand(1) * 1000,
    )
    (model(x, t, ctx) - x).pow(2).mean().backward()
    opt.step()
    ckpt = save_checkpoint(Path(root) / "ckpt", step=1, model=unwrap(model), optimizer=opt, ema=ema)
    m2, o2, e2 = build()
    load_checkpoint(ckpt, model=unwrap(m2), optimizer=o2, ema=e2)
    same = all(torch.equal(whole(a), whole(b)) for a, b in zip(model.parameters(), m2.parameters()))
    crafted = Path(root) / "crafted"
    if rank == 0:
        shutil.copytree(ckpt, crafted)
        craft_metadata(crafted, Path(root) / "MARKER")
    dist.barrier()
    try:
        load_checkpoint(crafted, model=unwrap(m2), optimizer=o2, ema=e2)
        refused = ""
    except ValueError as e:
        refused = str(e)
    return [same, refused, [whole(p.detach()).clone() for p in model.parameters()]]


@pytest.mark.dist
def test_fsdp2_checkpoints_load_on_two_ranks_and_one_and_crafted_ones_are_refused_on_every_rank(
    tmp_path: Path,
) -> None:
    from vdiff.models import videodit_tiny
    from vdiff.optim import OptimConfig, build_optimizer

    results = spawn_gloo(_fsdp2_save_and_load, 2, str(tmp_path))
    assert not (tmp_path / "MARKER").exists()
    for same, refused, _ in results:
        assert same and "asks to load builtins.exec" in refused and "\n" not in refused
    # the sharded checkpoint (DTensor chunks) reloads on one process, optimizer and EMA included
    torch.manual_seed(5)
    model = videodit_tiny(num_layers=1)
    ema = copy.deepcopy(model)
    opt = build_optimizer(model, OptimConfig(lr=0.01))
    load_checkpoint(tmp_path / "ckpt" / "step_00000001", model=model, optimizer=opt, ema=ema)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), results[0][2]))
