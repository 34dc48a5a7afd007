"""Building a :class:`~semanticfl.config.sections.Config`: TOML files, ``key=value`` overrides, type checks.

A config is read from a file or a shipped config (``semanticfl/configs/*.toml``), overrides are set into the
nested dict, and every table is built into its section's dataclass, rejecting unknown keys and wrong types
before :func:`~semanticfl.config.validation.validate` checks the ranges.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from semanticfl.config.sections import AlgorithmConfig, Config
from semanticfl.config.validation import validate
from semanticfl.errors import UserError

_SECTION_TYPES = get_type_hints(Config)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# --------------------------------------------------------------------------- building


def _describe_type(expected: Any) -> str:
    """How a one-line error names an annotated type: ``tuple[int, ...] | Literal["auto"]`` → "a list of
    integers or 'auto'"."""
    if get_origin(expected) in (Union, types.UnionType):
        return " or ".join(_describe_type(member) for member in get_args(expected))
    if get_origin(expected) is Literal:
        return " or ".join(repr(choice) for choice in get_args(expected))
    if get_origin(expected) is tuple:
        items = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {items.get(get_args(expected)[0], 'values')}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(expected, str(expected))


def _check_value(value: Any, expected: Any, where: str) -> Any:
    """Return ``value`` if it fits the annotated type (ints widen to float), else fail. A union takes
    a value its first fitting member takes; a ``Literal`` of strings takes exactly those strings."""
    if get_origin(expected) in (Union, types.UnionType):
        errors = {}
        for member in get_args(expected):
            try:
                return _check_value(value, member, where)
            except UserError as error:
                errors[get_origin(member)] = error
        if isinstance(value, (list, tuple)) and tuple in errors:
            raise errors[tuple]  # a list with a wrong item: name the item
        raise UserError(f"{where} must be {_describe_type(expected)}, got {value!r}")
    if get_origin(expected) is Literal:
        if not (isinstance(value, str) and value in get_args(expected)):
            raise UserError(f"{where} must be {_describe_type(expected)}, got {value!r}")
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {value!r}")
        return _check_int64(value, where)
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {value!r}")
        if isinstance(value, int):
            return float(_check_int64(value, where))
        if not math.isfinite(value):
            raise UserError(f"{where} must be a finite number, got {value!r}")
        return value
    if expected is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r}")
        if "\0" in value:
            raise UserError(f"{where} must not contain a NUL character, got {value!r}")
        return value
    if get_origin(expected) is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, e.g. [1, 2, 3], got {value!r}")
        item_type = get_args(expected)[0]
        return tuple(_check_value(item, item_type, f"{where}[{i}]") for i, item in enumerate(value))
    return value


def _check_int64(value: int, where: str) -> int:
    """TOML integers are 64-bit; a bigger one cannot be a setting (nor a torch or numpy seed)."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise UserError(f"{where} must fit in 64 bits ({INT64_MIN} to {INT64_MAX}), got {value}")
    return value


def build_dataclass(cls: type, data: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise UserError(f"[{where}] must be a table of settings, got {data!r}")
    hints = get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        if key not in known:
            raise UserError(
                f"unknown setting {where + '.' + key!r}; known settings in [{where}]: {', '.join(known)}"
            )
        values[key] = _check_value(value, hints[key], f"{where}.{key}")
    return cls(**values)


def _build_algorithm_section(data: dict[str, Any]) -> AlgorithmConfig:
    if not isinstance(data, dict):
        raise UserError(f"[algorithm] must be a table of settings, got {data!r}")
    name = data.get("name", AlgorithmConfig.name)
    if not isinstance(name, str):
        raise UserError(f"algorithm.name must be a string, got {name!r}")
    params = {}
    for key, value in data.items():
        if key == "name":
            continue
        if not isinstance(value, dict):
            raise UserError(
                f"unknown setting {'algorithm.' + key!r}; put hyperparameters in a table, "
                f"e.g. {f'algorithm.{name}.{key}={value!r}'!r}"
            )
        params[key] = dict(value)
    return AlgorithmConfig(name=name, params=params)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a nested dict (missing keys keep defaults)."""
    sections = {}
    for section, values in data.items():
        if section not in _SECTION_TYPES:
            raise UserError(
                f"unknown config section {section!r}; known sections: {', '.join(_SECTION_TYPES)}"
            )
        if section == "algorithm":
            sections[section] = _build_algorithm_section(values)
        else:
            sections[section] = build_dataclass(_SECTION_TYPES[section], values, section)
    config = Config(**sections)
    validate(config)
    return config


# --------------------------------------------------------------------------- files and overrides


def named_configs() -> list[str]:
    """Names of the configs shipped with the package (``semanticfl run NAME``)."""
    folder = resources.files("semanticfl") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_toml(source: str) -> dict[str, Any]:
    """Read a TOML config given a file path or the name of a shipped config."""
    path = Path(source)
    if not path.suffix and source in named_configs():
        text = (resources.files("semanticfl") / "configs" / f"{source}.toml").read_text()
        origin = f"shipped config '{source}'"
    elif path.is_file():
        text = read_config_text(path)
        origin = str(path)
    else:
        raise UserError(
            f"config '{source}' is neither a file nor a shipped config; "
            f"shipped configs: {', '.join(named_configs())}"
        )
    return parse_toml(text, origin)


def read_config_text(path: Path) -> str:
    """The text of a config file; one that cannot be read or is not UTF-8 is a UserError."""
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise UserError(f"cannot read config {path}: {reason}; pass a TOML file") from None


def parse_toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{origin} is not valid TOML: {exc}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``'train.lr=0.1'`` → (``['train', 'lr']``, ``0.1``); bare words stay strings."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {item!r} must look like section.key=value, e.g. train.rounds=5")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``section.key=value`` into a nested dict (returns a new dict)."""
    merged = _deep_copy(data)
    for item in overrides:
        path, value = parse_override(item)
        if len(path) < 2:
            raise UserError(f"override {item!r} needs a section, e.g. train.rounds=5")
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return merged


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def load_config(source: str | None = None, overrides: list[str] | None = None) -> Config:
    """The config of ``source`` (file or shipped name; default: the quickstart) plus overrides."""
    data = read_toml(source or "quickstart")
    return config_from_dict(apply_overrides(data, overrides or []))
