from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from vdiff.config import ConfigError, describe, is_override, load_config, save_config, split_overrides


@dataclass
class Inner:
    rate: float = 0.5
    """a rate"""
    kind: Literal["a", "b"] = "a"
    """which kind"""


@dataclass
class Outer:
    name: str = "x"
    """the name"""
    steps: int = 3
    """how many steps"""
    tags: list[str] = field(default_factory=list)
    """tags"""
    maybe: int | None = None
    """optional"""
    inner: Inner = field(default_factory=Inner)


def test_defaults_yaml_and_overrides_merge_in_order(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("steps: 5\ninner:\n  rate: 2\n")
    cfg = load_config(Outer, p, ["inner.kind=b", "tags=[u, v]", "maybe=7", "steps=9"])
    assert cfg.steps == 9 and cfg.inner.rate == 2.0 and isinstance(cfg.inner.rate, float)
    assert cfg.inner.kind == "b" and cfg.tags == ["u", "v"] and cfg.maybe == 7 and cfg.name == "x"


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match=r"inner\.rat.*did you mean inner\.rate"):
        load_config(Outer, None, ["inner.rat=1"])


@pytest.mark.parametrize(
    ("override", "msg"),
    [("steps=abc", "expected an integer"), ("inner.kind=c", "not one of"), ("steps=true", "integer")],
)
def test_wrong_types_are_errors(override: str, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        load_config(Outer, None, [override])


def test_values_are_never_evaluated() -> None:
    cfg = load_config(Outer, None, ["name=__import__('os').system('false')"])
    assert cfg.name == "__import__('os').system('false')"


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(Outer, None, ["inner.rate=0.25", "tags=a,b"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(Outer, tmp_path / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["inner"]["rate"] == 0.25


def test_describe_and_override_detection() -> None:
    lines = describe(Outer)
    assert any(line.startswith("inner.rate (float, default 0.5): a rate") for line in lines)
    assert is_override("a.b=1") and is_override("seed=3")
    assert not is_override("/data/x.mp4")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
def test_non_finite_floats_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"inner\.rate: expected a finite number"):
        load_config(Outer, None, [f"inner.rate={value}"])


def test_an_existing_file_is_never_an_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "take=2.mp4").write_bytes(b"")
    (tmp_path / "shot=3").mkdir()
    assert not is_override("take=2.mp4") and not is_override("shot=3")
    assert is_override("take=3.mp4")  # no such file: a key=value word
    words, overrides = split_overrides(
        ["in.mp4", "take=2.mp4", "--out", "x=1", "--compare", "a=1", "b=2", "seed=3"],
        value_options={"--out": 1, "--compare": 2},
    )
    assert words == ["in.mp4", "take=2.mp4", "--out", "x=1", "--compare", "a=1", "b=2"]
    assert overrides == ["seed=3"]
