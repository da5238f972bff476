"""Typed configs: dataclasses + YAML defaults + ``key.sub=value`` command-line overrides.

Every pipeline declares its config as (nested) dataclasses whose fields carry a one-line
docstring, as torchtitan does. ``load_config`` merges, in order, the dataclass defaults, a
YAML file and dotted overrides, and validates every key and type *before* any work starts:
an unknown key or a value of the wrong type is a :class:`ConfigError` that names the key,
the expected type and, for typos, the closest known key. A float must be finite (YAML's
``.nan``/``.inf`` are refused), and every config dataclass with a ``validate()`` method has it
called once built, so each pipeline refuses out-of-range values (a count below 1, a negative
interval) the same way. Values are parsed with ``yaml.safe_load``; nothing is ever
evaluated. On the command line, a word that names an existing file is an input, never an
override (``take=2.mp4``).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import math
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is wrong; the message says which key and what to do."""


def field_docs(cls: type) -> dict[str, str]:
    """Return ``{field: docstring}`` from the string literal that follows each field.

    A subclass gets its bases' field docs too (its own win).
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return {**docs, **_own_field_docs(cls)}


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in itertools.pairwise(body):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert where lossless (int -> float)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                # NOTE: YAML reads .nan and .inf as floats; no config value means either.
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {_type_name(tp)}")


def _factory_defaults(f: dataclasses.Field) -> dict[str, Any]:
    """The values of a nested config's ``default_factory`` instance ({} for other fields).

    NOTE: a factory may configure its instance (``field(default_factory=dense_policy)``); keys
    that the YAML or the overrides leave out keep the factory's values, not the class defaults.
    """
    if f.default_factory is dataclasses.MISSING:
        return {}
    value = f.default_factory()
    return to_dict(value) if dataclasses.is_dataclass(value) else {}


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for name in data:
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key {prefix}{name}{hint} (known keys here: {known})")
    kwargs = {}
    for name, f in fields.items():
        base = _factory_defaults(f)
        if name in data:
            value = merge_mappings(base, data[name]) if base and isinstance(data[name], dict) else data[name]
            kwargs[name] = _coerce(value, hints[name], prefix + name)
        elif dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], base, prefix=f"{prefix}{name}.")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> ``(["a", "b"], 3)``; the value is parsed as YAML (never evaluated)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"override {text!r}: {key!r} is not a dotted config key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from e
    return key.split("."), value


def is_override(arg: str) -> bool:
    """True for command-line words of the form ``key.sub=value`` that do not name an existing path.

    NOTE: ``take=2.mp4`` is an input when that file exists: a path on disk is never an override.
    """
    key = arg.split("=", 1)[0]
    if not ("=" in arg and bool(key) and all(p.isidentifier() for p in key.split("."))):
        return False
    try:
        return not Path(arg).exists()
    except (OSError, ValueError):  # a name too long for the file system (or with NUL) is no path
        return True


def split_overrides(
    argv: typing.Sequence[str], *, value_options: typing.Mapping[str, int] | None = None
) -> tuple[list[str], list[str]]:
    """``(other words, overrides)`` of a command line.

    A word is an override when :func:`is_override` says so and it is not one of the values of an
    option in ``value_options`` (option -> how many values it takes): ``--out take=2`` names a
    folder, not a key.
    """
    words: list[str] = []
    overrides: list[str] = []
    values_left = 0
    for arg in argv:
        if values_left:
            values_left -= 1
            words.append(arg)
            continue
        values_left = (value_options or {}).get(arg, 0)
        (overrides if is_override(arg) else words).append(arg)
    return words, overrides


def merge_mappings(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, nested mappings merged key by key (neither is changed)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_mappings(out[k], v)
        else:
            out[k] = v
    return out


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """``data`` with each ``key.sub=value`` of ``overrides`` merged in, in order."""
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        data = merge_mappings(data, nested)
    return data


def read_yaml_section(path: str | Path, name: str) -> Any:
    """The value under top-level key ``name`` of YAML file ``path``; None when the file holds no
    mapping or no such key (a ConfigError when it is not valid YAML)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    return data.get(name) if isinstance(data, dict) else None


def read_yaml_mapping(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """The mapping YAML file ``path`` holds ({} when empty); a ConfigError naming it ``name`` (default:
    the path) when it is not valid YAML or not a mapping."""
    name = str(path) if name is None else name
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{name} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must hold a mapping at the top level")
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
) -> T:
    """Build ``cls`` from its defaults, an optional YAML file and ``key.sub=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = read_yaml_mapping(path, f"config file {path}")
    return _build(cls, apply_overrides(data, overrides))


def config_from_dict(cls: type[T], data: typing.Mapping[str, Any], *, prefix: str = "") -> T:
    """Build ``cls`` from ``data`` (e.g. one section of a YAML file) with :func:`load_config`'s checks.

    ``prefix`` (``"text."``) is put before the keys named in errors.
    """
    if not isinstance(data, typing.Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    return _build(cls, dict(data), prefix=prefix)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (paths as strings, tuples as lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically) so a run can be reproduced."""
    from vdiff.io.files import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """One line per leaf key: ``key (type, default): doc`` for ``--help`` text.

    ``defaults`` is an instance of ``cls`` whose values are shown (a nested config's factory).
    """
    lines = []
    docs = field_docs(cls)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub = getattr(defaults, f.name) if defaults is not None else None
            if sub is None and f.default_factory is not dataclasses.MISSING:
                sub = f.default_factory()
            lines.extend(describe(tp, prefix=f"{prefix}{f.name}.", defaults=sub))
            continue
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "required"
        lines.append(f"{prefix}{f.name} ({_type_name(tp)}, default {default!r}): {docs.get(f.name, '')}")
    return lines
