"""Read attribute values the way AHI writes them in metadata documents.

AHI keeps DICOM text as written, padding included (``"1 "``, ``["0.25", "0.25 "]``), writes
binary numbers as JSON numbers, multi-valued attributes as arrays and empty ones as ``null``.
These helpers turn such values into clean Python numbers and strings, returning ``None`` for
absent or empty values instead of raising.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def text(value: Any) -> str | None:
    """A single string with DICOM padding stripped; the first item of a list; None when empty.

    >>> text("1.2.3 "), text(["CHEST", "ABDOMEN"]), text(None), text("  ")
    ('1.2.3', 'CHEST', None, None)
    """
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    cleaned = str(value).strip(" \x00")
    return cleaned or None


def number(value: Any) -> float | None:
    """A float from a number or a DS/IS string (first value of a list); None when absent or invalid.

    >>> number("-1024 "), number(["40", "400"]), number(None), number("n/a")
    (-1024.0, 40.0, None, None)
    """
    kind = type(value)
    if kind is int:  # JSON numbers, the common case, first: an index build reads millions
        return float(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None or isinstance(value, bool):
        return None
    try:
        result = float(str(value).strip(" \x00")) if isinstance(value, str) else float(value)
    except ValueError:
        return None
    return result if math.isfinite(result) else None


def integer(value: Any) -> int | None:
    """An int from a number or an IS string; None when absent or not a whole number."""
    result = number(value)
    if result is None or not result.is_integer():
        return None
    return int(result)


def numbers(value: Any) -> list[float] | None:
    """All values of a multi-valued numeric attribute (``"a\\\\b"`` strings are split too)."""
    if value is None:
        return None
    items = value if isinstance(value, list) else str(value).split("\\")
    parsed = [number(item) for item in items]
    if not parsed or any(p is None for p in parsed):
        return None
    return [p for p in parsed if p is not None]


def lookup(levels: list[Mapping[str, Any]], keyword: str) -> Any:
    """The value of ``keyword`` at the first level (most specific first) that has it non-null."""
    for level in levels:
        value = level.get(keyword)
        if value is not None:
            return value
    return None
