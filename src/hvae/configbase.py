"""The generic machinery of hvae's configs: typed dataclasses read from plain mappings, YAML and overrides.

A config is a dataclass that subclasses :class:`Serializable`; its fields' annotations are the schema.
:func:`from_dict` builds one from a mapping (YAML, JSON, a saved ``config.json``), rejecting unknown keys and
ill-typed values with a :class:`ConfigError` that names the key and what is accepted; a field whose type is
itself a config dataclass is a nested section (``model.vq.codes``). :func:`apply_overrides` applies
command-line ``key.sub=value`` overrides to a mapping before it is read. ``__post_init__`` checks the values
with :func:`require` (and :func:`coerce_fields` when the class may be built directly). A key that moved keeps
working: list it in the class's ``RENAMED`` (old key -> new dotted key), and :func:`from_dict` reads it there,
warning with the new name. The model's, data's and run's configs are in :mod:`hvae.config`,
:mod:`hvae.data.loader` and :mod:`hvae.runconfig`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

__all__ = [
    "ConfigError",
    "Serializable",
    "apply_overrides",
    "coerce",
    "coerce_fields",
    "from_dict",
    "load_yaml",
    "merge",
    "move_renamed",
    "parse_override",
    "require",
    "to_dict",
]


class ConfigError(ValueError):
    """A configuration key is unknown or its value is not accepted."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lossless cases (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        hint = "; YAML reads yes/no/on/off as true/false: quote the word" if isinstance(value, bool) else ""
        raise ConfigError(f"{key}: {value!r} is not accepted; use one of {_type_name(tp)}{hint}")
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not accepted; expected {_type_name(tp)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a plain mapping, rejecting unknown keys and ill-typed values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {data!r}")
    data = move_renamed(cls, data, prefix)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + u for u in unknown)}; "
            f"valid keys are: {', '.join(prefix + n for n in names)}"
        )
    kwargs = {k: coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if prefix and not str(e).startswith(prefix):
            raise ConfigError(prefix + str(e)) from None
        raise


def move_renamed(cls: type, data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``data`` with the keys ``cls.RENAMED`` lists moved to their new place (a copy; a warning names the new
    key). Both the old and the new key set: a ConfigError, since it is unclear which one is meant."""
    renamed = getattr(cls, "RENAMED", {})
    old = [k for k in data if k in renamed]
    if not old:
        return data
    out = dict(data)
    for key in old:
        value = out.pop(key)
        *sections, last = renamed[key].split(".")
        node = out
        for part in sections:
            child = node.get(part)
            if child is None:
                child = {}
            elif dataclasses.is_dataclass(child):
                child = to_dict(child)
            elif not isinstance(child, dict):
                raise ConfigError(f"{prefix}{part}: expected a mapping of its fields, got {child!r}")
            else:
                child = dict(child)
            node[part] = child
            node = child
        if last in node:
            raise ConfigError(
                f"{prefix}{key} and {prefix}{renamed[key]} are both set; {prefix}{key} is the old name of "
                f"{prefix}{renamed[key]}: keep only {prefix}{renamed[key]}"
            )
        node[last] = value
    moved = ", ".join(f"{prefix}{key} -> {prefix}{renamed[key]}" for key in old)
    warnings.warn(
        f"old config keys read in their new place: {moved}; write the new keys (hvae.configbase)",
        FutureWarning,
        stacklevel=3,
    )
    return out


def merge(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``changes`` applied, section by section: a mapping in ``changes`` changes only the keys
    it names of the mapping it meets (a copy; neither argument changes)."""
    out = dict(data)
    for key, value in changes.items():
        old = out.get(key)
        out[key] = merge(old, value) if isinstance(value, dict) and isinstance(old, dict) else value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, JSON-safe mapping of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


class _Loader(yaml.SafeLoader):
    """YAML as configs mean it: ``1e-3`` and ``5e+4`` are numbers (YAML 1.1, PyYAML's default, reads a float
    without a dot as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text the way hvae reads configs and overrides (see :class:`_Loader`)."""
    return yaml.load(text, Loader=_Loader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one ``key.sub=value`` command-line override; the value is read as YAML (``3``, ``[1,2]``, ``true``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key; write it as key.sub=value")
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied (validation happens in ``from_dict``)."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return out


class Serializable:
    """Mixin: JSON/YAML round trip for config dataclasses.

    ``RENAMED`` maps a key this class no longer has to the dotted key (relative to the class) that holds
    it now: :func:`from_dict` reads the old one there with a warning, so files written before still load.
    """

    RENAMED: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text_or_path: str | Path):
        if isinstance(text_or_path, Path) or ("\n" not in text_or_path and text_or_path.endswith((".yaml", ".yml"))):
            text = Path(text_or_path).read_text()
        else:
            text = text_or_path
        data = load_yaml(text) or {}
        return cls.from_dict(data)

    def replace(self, **changes):
        """A validated copy with some fields changed; a section given as a mapping changes only the keys it
        names (``cfg.replace(vq={"codes": 8})`` keeps the other ``vq`` keys)."""
        changes = {k: to_dict(v) for k, v in move_renamed(type(self), changes, "").items()}
        return self.from_dict(merge(self.to_dict(), changes))


def require(cond: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` (which names the key and the fix) unless ``cond``."""
    if not cond:
        raise ConfigError(message)


def coerce_fields(cfg: Any) -> None:
    """Check and convert every field of the dataclass instance ``cfg`` as :func:`from_dict` would: direct
    construction (``ModelConfig(...)``) is then checked like a file is."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        setattr(cfg, f.name, coerce(getattr(cfg, f.name), hints[f.name], f.name))
