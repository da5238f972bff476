"""The loop steps vdiff train and vdiff distill share (vdiff.training.loop), against closed forms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vdiff.config import ConfigError, apply_overrides, merge_mappings, read_yaml_mapping, read_yaml_section
from vdiff.training import TrainConfig
from vdiff.training.config import LoopConfig
from vdiff.training.loop import StepLog, log_due, metrics_row, optimizer_step, update_ema


def test_update_ema_is_the_closed_form_on_trainable_parameters_only() -> None:
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    w0, b0 = ema.weight.detach().clone(), ema.bias.detach().clone()
    update_ema(ema, model, 0.9)
    torch.testing.assert_close(ema.weight, 0.9 * w0 + 0.1 * model.weight.detach(), rtol=0, atol=1e-7)
    torch.testing.assert_close(ema.bias, b0, rtol=0, atol=0)  # frozen: left alone


def test_optimizer_step_sets_the_lr_clips_steps_and_moves_the_ema() -> None:
    cfg = TrainConfig()
    cfg.optim.lr, cfg.optim.grad_clip, cfg.optim.warmup_steps = 0.5, 1.0, 0
    cfg.optim.weight_decay = 0.0
    cfg.ema.decay = 0.75
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = torch.nn.Linear(1, 1, bias=False).requires_grad_(False)
    with torch.no_grad():
        ema.weight.fill_(1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=123.0)
    loss = (model(torch.tensor([[2.0]])) * 3.0).sum()  # d/dw = 6: clipped to norm 1
    lr, grad_norm = optimizer_step(loss, model, optimizer, ema, step=0, cfg=cfg)
    assert float(grad_norm) == pytest.approx(6.0)
    assert lr == pytest.approx(0.5) and optimizer.param_groups[0]["lr"] == lr  # step 0, no warmup
    assert model.weight.item() == pytest.approx(1.0 - lr * 1.0)
    assert ema.weight.item() == pytest.approx(0.75 * 1.0 + 0.25 * (1.0 - lr))


def test_log_due_on_the_first_last_every_nth_and_stopping_steps() -> None:
    loop = LoopConfig(steps=25, log_every=10)
    due = [s for s in range(1, 26) if log_due(s, loop, stopping=False)]
    assert due == [1, 10, 20, 25]
    assert log_due(7, loop, stopping=True)


def test_metrics_row_rounds_and_appends_the_extra_keys() -> None:
    logged = StepLog(loss=0.25, memory_mb=12.345, skipped=2, bad_samples=[])
    row = metrics_row(3, 1e-4, 0.5, 8.0, 1.23456, logged, shift=3.0)
    assert row == {
        "step": 3,
        "loss": 0.25,
        "lr": 1e-4,
        "grad_norm": 0.5,
        "samples_per_s": 8.0,
        "max_memory_mb": 12.3,
        "time": 1.235,
        "data_skipped": 2,
        "shift": 3.0,
    }


def test_yaml_mapping_section_merge_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a: {b: 1, c: 2}\n")
    data = read_yaml_mapping(path)
    assert merge_mappings(data, {"a": {"c": 3}, "d": 4}) == {"a": {"b": 1, "c": 3}, "d": 4}
    assert apply_overrides(data, ["a.b=5", "e=x"]) == {"a": {"b": 5, "c": 2}, "e": "x"}
    assert data == {"a": {"b": 1, "c": 2}}  # not changed in place
    assert read_yaml_section(path, "a") == {"b": 1, "c": 2} and read_yaml_section(path, "z") is None
    path.write_text("- 1\n")
    assert read_yaml_section(path, "a") is None
    with pytest.raises(ConfigError, match=r"--config c\.yaml must hold a mapping"):
        read_yaml_mapping(path, "--config c.yaml")
