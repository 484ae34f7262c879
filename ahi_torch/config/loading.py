"""Load YAML configs into the schema, apply ``key=value`` overrides, hash them.

>>> cfg = load("configs/ct-volumes.yaml", overrides=["loader.batch_size=4", "view=volumes"])
>>> cfg.loader.batch_size, config_hash(cfg)
(4, '3f1a...')

Errors name the key and what it allows, e.g.
``loader.sampler: 'random' is not one of sequential, shuffle, locality, weighted, class_balanced``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from ..errors import ConfigError
from .schema import Config

T = TypeVar("T")


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


@dataclasses.dataclass(frozen=True)
class _Scalar:
    """A plain YAML scalar as written (``text``) and as YAML 1.1 reads it (``parsed``).

    YAML reads ``0123`` as the octal integer 83, ``1e3`` as a float and ``NO`` as false. Text
    keys (IDs, UIDs, names) take the text as written; other keys take the reading.
    """

    text: str
    parsed: Any


class _TextKeepingLoader(yaml.SafeLoader):
    """SafeLoader whose non-string plain scalars remember their text (see :class:`_Scalar`),
    and which refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            key = str(key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice in one section", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: where, then what (PyYAML's own message takes six)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def _keep_text(tag: str) -> None:
    read = _TextKeepingLoader.yaml_constructors[tag]

    def construct(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> _Scalar:
        return _Scalar(str(node.value), read(loader, node))

    _TextKeepingLoader.add_constructor(tag, construct)


for _tag in ("int", "float", "bool", "null", "timestamp"):
    _keep_text(f"tag:yaml.org,2002:{_tag}")


def _plain(value: Any) -> Any:
    """``value`` with every :class:`_Scalar` replaced by its reading."""
    if isinstance(value, _Scalar):
        return value.parsed
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_key(k): _plain(v) for k, v in value.items()}
    return value


def _key(key: Any) -> Any:
    return key.text if isinstance(key, _Scalar) else key


def _scalar_for(value: _Scalar, kind: Any) -> Any:
    """The text or the reading of ``value``, whichever ``kind`` wants."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        if value.parsed is None and type(None) in args:
            return None
        # Where text is allowed too, only YAML 1.2's true/false are flags: a study ID "NO" stays text.
        if isinstance(value.parsed, bool) and bool in args and value.text.lower() in ("true", "false"):
            return value.parsed
        return value.text if str in args else value.parsed
    return value.text if kind is str or origin is Literal else value.parsed


def _coerce(value: Any, kind: Any, where: str) -> Any:  # noqa: PLR0912 - one branch per config type
    if isinstance(value, _Scalar):
        value = _scalar_for(value, kind)
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} does not fit any allowed form")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(_key(k)): _coerce(v, args[1], f"{where}.{_key(k)}") for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, where)  # type: ignore[arg-type]
    if kind is Any:
        return _plain(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported type {_type_name(kind)}")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and ill-typed values."""
    if isinstance(data, _Scalar):
        data = data.parsed
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    data = {_key(k): v for k, v in data.items()}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (allowed: {', '.join(fields)})")
    values = {}
    for name, value in data.items():
        values[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    missing = [
        name
        for name, f in fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where or 'config'}: missing required key {missing[0]!r}")
    try:
        return cls(**values)
    except ConfigError as error:
        raise ConfigError(f"{where or 'config'}: {error}") from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    target = data
    for key in keys[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[keys[-1]] = value


def _read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_TextKeepingLoader)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["loader.batch_size=8", "search.filters=[{patient_id: 0123}]"]``: values read as YAML."""
    result: dict[str, Any] = copy.deepcopy(data)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like key.path=value")
        key, raw = override.split("=", 1)
        try:
            value = _read_yaml(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"override {key}: value is not valid YAML ({yaml_problem(error)})") from None
        _set_dotted(result, key.strip(), value)
    return result


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply overrides and validate it."""
    source = Path(path)
    if not source.exists():
        raise ConfigError(f"config file {source} does not exist")
    try:
        data = _read_yaml(source.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {yaml_problem(error)}") from None
    return from_dict(Config, apply_overrides(data, overrides or []))


#: ``connection`` fields never written to a file ahi_torch produces (manifests are shared and committed).
SECRET_FIELDS = ("access_key_id", "secret_access_key", "session_token")
REDACTED = "<redacted>"


def to_dict(cfg: Config, *, secrets: bool = False) -> dict[str, Any]:
    """The config as plain data; credentials read ``<redacted>`` unless ``secrets=True``.

    ``from_dict(Config, to_dict(cfg, secrets=True)) == cfg``; without secrets the result is what
    a manifest may hold.
    """
    data = dataclasses.asdict(cfg)
    if not secrets:
        connection = data["connection"]
        for name in SECRET_FIELDS:
            if connection.get(name) is not None:
                connection[name] = REDACTED
    return data


def config_hash(cfg: Config) -> str:
    """SHA-256 of the canonical JSON form: equal hashes mean equal configurations (credentials aside)."""
    canonical = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
