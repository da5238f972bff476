"""The sampling-time policy: dense at both ends of the trajectory, the fast backend between."""

from __future__ import annotations

import pytest

from vdiff.attention.policy import AttentionPolicy


def test_backend_for_steps() -> None:
    p = AttentionPolicy(backend="sparse_sage", dense_first_steps=2, dense_last_steps=1)
    p.validate()
    got = [p.backend_for(s, 6) for s in range(6)]
    assert got == ["sdpa", "sdpa", "sparse_sage", "sparse_sage", "sparse_sage", "sdpa"]
    assert [AttentionPolicy(dense_first_steps=0, dense_last_steps=0).backend_for(s, 3) for s in range(3)] == [
        "sparse_sage"
    ] * 3
    assert AttentionPolicy(dense_first_steps=5).backend_for(2, 3) == "sdpa"
    with pytest.raises(ValueError, match="outside"):
        p.backend_for(6, 6)


def test_options_for_routes_layer_and_head_offset() -> None:
    p = AttentionPolicy(backend="sparse", options={"topk": 0.25})
    assert p.options_for("sparse", layer_index=3, head_offset=4) == {
        "topk": 0.25,
        "layer_index": 3,
        "head_offset": 4,
    }
    assert p.options_for("sdpa", layer_index=3) == {}
    assert AttentionPolicy(backend="sage", options={"pv_dtype": "bf16"}).options_for(
        "sage", layer_index=0
    ) == {"pv_dtype": "bf16"}


def test_validate_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="unknown attention backend"):
        AttentionPolicy(backend="nope").validate()
    with pytest.raises(ValueError, match=">= 0"):
        AttentionPolicy(dense_last_steps=-1).validate()
