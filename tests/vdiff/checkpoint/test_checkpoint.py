"""DCP checkpoints: model, optimizer, EMA and trainer state round-trip; temporary folders are ignored."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from vdiff.checkpoint import latest_checkpoint, load_checkpoint, rng_from_json, rng_to_json, save_checkpoint


def _trained(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.nn.Module]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(torch.randn(5, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    return model, opt, ema


def test_round_trip_restores_everything(tmp_path: Path) -> None:
    model, opt, ema = _trained(0)
    g = torch.Generator().manual_seed(7)
    torch.randn(3, generator=g)
    state = {"data": {"epoch": 2, "step_in_epoch": 5}, "rng": rng_to_json(g.get_state())}
    root = tmp_path / "ckpt"
    path = save_checkpoint(root, step=3, model=model, optimizer=opt, ema=ema, trainer_state=state)
    assert path == tmp_path / "ckpt" / "step_00000003" and latest_checkpoint(tmp_path / "ckpt") == path
    m2, o2, e2 = _trained(1)
    got = load_checkpoint(path, model=m2, optimizer=o2, ema=e2)
    assert got["step"] == 3 and got["data"] == {"epoch": 2, "step_in_epoch": 5}
    for a, b in [(model, m2), (ema, e2)]:
        for (ka, pa), (kb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(pa, pb)
    s1, s2 = opt.state_dict()["state"], o2.state_dict()["state"]
    for i in s1:
        assert torch.equal(s1[i]["exp_avg_sq"], s2[i]["exp_avg_sq"]) and s1[i]["step"] == s2[i]["step"]
    g2 = torch.Generator()
    g2.set_state(rng_from_json(got["rng"]))
    assert torch.equal(torch.randn(4, generator=g2), torch.randn(4, generator=g))
    # the restored optimizer takes the same next step
    x = torch.randn(5, 4)
    for m, o in [(model, opt), (m2, o2)]:
        m(x).square().mean().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), m2.parameters()))


def test_latest_ignores_partial_and_temporary_folders(tmp_path: Path) -> None:
    model, opt, _ = _trained(0)
    root = tmp_path / "ckpt"
    assert latest_checkpoint(root) is None
    save_checkpoint(root, step=2, model=model, optimizer=opt)
    save_checkpoint(root, step=10, model=model, optimizer=opt)
    (root / "step_00000020.tmp").mkdir()
    (root / "step_00000030").mkdir()  # no .metadata: a partial copy
    assert latest_checkpoint(root) == root / "step_00000010"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(root / "step_00000030", model=model, optimizer=opt)


def test_a_checkpoint_of_another_optimizer_is_a_clear_error(tmp_path: Path) -> None:
    model, opt, ema = _trained(0)
    path = save_checkpoint(tmp_path, step=3, model=model, optimizer=opt, ema=ema, trainer_state={})
    m2, _, e2 = _trained(1)
    # NOTE: was a DCP CheckpointException (a BaseException that `except Exception` does not catch)
    with pytest.raises(ValueError, match=r"does not fit this run's model/optimizer .*resume=none"):
        sgd = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
        load_checkpoint(path, model=m2, optimizer=sgd, ema=e2)
