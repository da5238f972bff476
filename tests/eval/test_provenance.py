"""Bootstrap intervals and the formula/weights records that `vdiff eval --compare` checks."""

from __future__ import annotations

import numpy as np
import pytest

from eval.provenance import provenance_warnings, weights_manifest
from eval.stats import bootstrap_ci


def _mean(entries):
    return float(np.mean([e["video_results"] for e in entries]))


def test_bootstrap_ci_is_deterministic_and_uses_the_metric_aggregate():
    entries = [{"video_results": v} for v in (0.1, 0.4, 0.2, 0.9, 0.5, 0.3)]
    ci = bootstrap_ci(entries, _mean, resamples=2000)
    assert ci == bootstrap_ci(entries, _mean, resamples=2000)
    assert ci[0] < _mean(entries) < ci[1] and ci[0] >= 0.1 and ci[1] <= 0.9
    # A share (dynamic_degree) only takes multiples of 1/n; a max reaches the largest value.
    share = bootstrap_ci([{"video_results": b} for b in (True, False, False, True)], _mean, resamples=500)
    assert all(round(4 * x) == 4 * x for x in share)
    top = bootstrap_ci(entries, lambda es: max(e["video_results"] for e in es), resamples=500)
    assert top[1] == 0.9
    # Pooled ratio (VBench's consistency aggregate): sum of sims / sum of pairs over resampled videos.
    pooled = [{"video_sim": s, "cnt_per_video": c} for s, c in ((9.0, 10), (1.0, 10), (5.0, 5))]
    lo, hi = bootstrap_ci(
        pooled,
        lambda es: sum(e["video_sim"] for e in es) / sum(e["cnt_per_video"] for e in es),
        resamples=500,
    )
    assert 0.1 <= lo < 15 / 25 < hi <= 1.0


def test_bootstrap_ci_needs_two_videos_and_resamples():
    one = [{"video_results": 0.5}]
    assert bootstrap_ci(one, _mean, resamples=100) is None
    assert bootstrap_ci(one * 3, _mean, resamples=0) is None
    assert bootstrap_ci(one * 3, _mean, resamples=100) == [0.5, 0.5]


def test_weights_manifest_hashes_files_and_folders(tmp_path):
    import hashlib

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / "sub").mkdir()
    (tmp_path / "model" / "sub" / "w.bin").write_bytes(b"abc")
    (tmp_path / "head.pth").write_bytes(b"xyz")
    m = weights_manifest({"weights.b": tmp_path / "model", "weights.a": tmp_path / "head.pth"})
    assert list(m) == ["weights.a", "weights.b"]
    assert m["weights.a"]["sha256"] == {"head.pth": hashlib.sha256(b"xyz").hexdigest()}
    assert m["weights.b"]["sha256"] == {
        "config.json": hashlib.sha256(b"{}").hexdigest(),
        "sub/w.bin": hashlib.sha256(b"abc").hexdigest(),
    }


def _dim(method="m1", sha="aa", version=None):
    return {
        "method": method,
        "formula": {"method": method, "version": version, "vbench_head": "h", "vdiff": "0.1.0"},
        "weights": {"weights.clip_b32": {"path": "/w", "sha256": {"model.safetensors": sha}}},
    }


@pytest.mark.parametrize(
    ("b", "needle"),
    [
        (_dim(sha="bb"), "different weights for weights.clip_b32 (sha256 differs: model.safetensors"),
        (_dim(method="m2"), "different methods (A: m1; B: m2)"),
        (_dim(version="2"), "different formula versions"),
        ({**_dim(), "weights": {}}, "only run A used weights weights.clip_b32"),
        ({"method": "m1"}, "run B records no formula/weights manifest"),
    ],
)
def test_provenance_warnings_name_what_differs(b, needle):
    assert provenance_warnings({"x": _dim()}, {"x": _dim()}) == []
    warnings = provenance_warnings({"x": _dim(), "only_a": _dim()}, {"x": b})
    assert len(warnings) == 1 and needle in warnings[0] and warnings[0].startswith("x: ")
