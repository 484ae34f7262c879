"""Server-side validation of request (and, in strict mode, response) values against the service model.

botocore validates only required members, types and minimums on the client; the service itself
enforces maximum lengths, ranges, patterns, enums and union rules. Messages follow AWS's format,
for example::

    1 validation error detected: Value 'X' at 'datastoreId' failed to satisfy constraint:
    Member must satisfy regular expression pattern: [0-9a-z]{32}

Values of members the model marks ``sensitive`` (patient names, search criteria...) are never
echoed back, so no patient data reaches messages or logs.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterator
from typing import Any

from botocore.model import ListShape, MapShape, Shape, StructureShape

from ..errors import ValidationException


@functools.cache
def _compile(pattern: str) -> re.Pattern[str]:
    # botocore strips the anchors the Smithy model has; the service matches the whole value.
    # Java's \p{ASCII} has no Python spelling; \w is ASCII-only in Java.
    return re.compile(pattern.replace(r"\p{ASCII}", r"[\x00-\x7f]"), re.ASCII | re.DOTALL)


def _describe(value: Any, shape: Shape, sensitive: bool) -> str:
    if sensitive or shape.serialization.get("sensitive") or shape.metadata.get("sensitive"):
        return "Value"
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    if len(text) > 64:
        text = text[:64] + "..."
    return f"Value '{text}'"


def iter_violations(value: Any, shape: Shape, path: str, sensitive: bool = False) -> Iterator[str]:  # noqa: PLR0912 - one branch per constraint of the model
    """Yield one AWS-style message per constraint that ``value`` breaks; nothing if it is valid."""
    sensitive = sensitive or bool(shape.metadata.get("sensitive"))
    meta = shape.metadata
    if isinstance(shape, StructureShape):
        if not isinstance(value, dict):
            yield f"Value at '{path}' failed to satisfy constraint: Member must be a structure"
            return
        present = [name for name in shape.members if value.get(name) is not None]
        if shape.metadata.get("union") and len(present) != 1:
            yield (
                f"Value at '{path}' failed to satisfy constraint: Member must have exactly one of "
                f"{', '.join(shape.members)} set; {len(present)} were set"
            )
        for name in shape.required_members:
            if value.get(name) is None:
                yield f"Value null at '{_join(path, name)}' failed to satisfy constraint: Member must not be null"
        for name in present:
            yield from iter_violations(value[name], shape.members[name], _join(path, name), sensitive)
    elif isinstance(shape, ListShape):
        yield from _length(value, meta, path, shape, sensitive)
        for i, item in enumerate(value):
            yield from iter_violations(item, shape.member, f"{path}.{i + 1}.member", sensitive)
    elif isinstance(shape, MapShape):
        yield from _length(value, meta, path, shape, sensitive)
        for key, item in value.items():
            yield from iter_violations(key, shape.key, f"{path}.{key}.key", sensitive)
            yield from iter_violations(item, shape.value, f"{path}.{key}.value", sensitive)
    elif shape.type_name == "string":
        yield from _length(value, meta, path, shape, sensitive)
        if "pattern" in meta and not _compile(meta["pattern"]).fullmatch(value):
            yield (
                f"{_describe(value, shape, sensitive)} at '{path}' failed to satisfy constraint: "
                f"Member must satisfy regular expression pattern: {meta['pattern']}"
            )
        if shape.enum and value not in shape.enum:
            yield (
                f"{_describe(value, shape, sensitive)} at '{path}' failed to satisfy constraint: "
                f"Member must satisfy enum value set: [{', '.join(shape.enum)}]"
            )
    elif shape.type_name == "blob":
        yield from _length(value, meta, path, shape, sensitive)
    elif shape.type_name in ("integer", "long"):
        yield from _bounds(value, value, "value", meta, path, shape, sensitive)
    elif shape.type_name == "timestamp" and not isinstance(value, dt.datetime):
        yield f"Value at '{path}' failed to satisfy constraint: Member must be a timestamp"


def _bounds(
    value: Any, measure: int, noun: str, meta: dict[str, Any], path: str, shape: Shape, sensitive: bool
) -> Iterator[str]:
    """The model's ``min``/``max`` applied to ``measure`` (a value or a length)."""
    for key, relation, broken in (
        ("min", "greater", measure < meta.get("min", measure)),
        ("max", "less", measure > meta.get("max", measure)),
    ):
        if broken:
            yield (
                f"{_describe(value, shape, sensitive)} at '{path}' failed to satisfy constraint: "
                f"Member must have {noun} {relation} than or equal to {meta[key]}"
            )


def _length(value: Any, meta: dict[str, Any], path: str, shape: Shape, sensitive: bool) -> Iterator[str]:
    yield from _bounds(value, len(value), "length", meta, path, shape, sensitive)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def validate(value: dict[str, Any], shape: StructureShape) -> None:
    """Raise :class:`ValidationException` listing every violation, as AWS does."""
    problems = list(iter_violations(value, shape, ""))
    if problems:
        count = len(problems)
        noun = "error" if count == 1 else "errors"
        raise ValidationException(f"{count} validation {noun} detected: " + "; ".join(problems))
