"""``bench/attention.py --calibrate``: calibrated headline rows, calibrated on other inputs than the timed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    # NOTE: run as a script, bench/ is on sys.path and the module imports its siblings that way.
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sys.modules.pop("attention", None)
    import attention

    grad = torch.is_grad_enabled()
    yield attention
    # NOTE: the script's main() turns autograd off for its process; the test process needs it back.
    torch.set_grad_enabled(grad)
    sys.modules.pop("attention", None)


def test_calibration_inputs_are_another_seed(bench) -> None:
    a = bench.make_inputs("video", tokens=1024, head_dim=32, dtype=torch.float32)
    b = bench.make_inputs("video", tokens=1024, head_dim=32, dtype=torch.float32, seed=1)
    assert all(x.shape == y.shape and not torch.equal(x, y) for x, y in zip(a, b))


def test_calibrated_rows_are_headline_rows_with_their_error(bench, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    argv = ["--quick", "--tokens", "2048", "--head-dims", "32", "--inputs", "video", "--calibrate", "0.05"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    rows = {r["backend"]: r for r in json.loads(out.read_text())}
    cal = [rows["sparse_sage@cal0.05"], rows["sparse_sage+tiles@cal0.05"]]
    for r in cal:
        # NOTE: the error is measured on the timed (seed 0) inputs, which the calibration never saw.
        assert 0.0 < r["rel_l1"] <= 0.05 and r["cos_sim"] >= 0.999

    def row(backend: str):
        return bench.Row(16384, 128, "video", backend, 1.0, 2.5, 0.5, 0.9999, 0.01, 0.0)

    # NOTE: a calibrated row counts towards the goal; a curve row never does.
    lines = bench.goal_lines([row("sparse_sage@cal0.02")])
    assert lines and "met" in lines[0] and "NOT" not in lines[0]
    assert not bench.goal_lines([row("sparse_sage@0.9")])
