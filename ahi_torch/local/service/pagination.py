"""Opaque ``nextToken`` values: an offset bound to the query that produced it.

A token from one query (or one data store) used with another is rejected with
ValidationException, as AWS rejects tokens it did not issue for that request.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from typing import Any, TypeVar

from ..errors import ValidationException

T = TypeVar("T")

DEFAULT_PAGE = 50


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode_token(offset: int, query: str) -> str:
    raw = json.dumps({"o": offset, "q": query}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_token(token: str | None, query: str) -> int:
    """The offset a token stands for; 0 without a token."""
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        offset, issued_for = int(data["o"]), str(data["q"])
    except (ValueError, KeyError, TypeError, UnicodeEncodeError):
        raise ValidationException("Invalid nextToken") from None
    if issued_for != query or offset < 0:
        raise ValidationException("Invalid nextToken: it was issued for a different request")
    return offset


def page(items: Sequence[T], token: str | None, max_results: int | None, query: str) -> tuple[list[T], str | None]:
    """One page of ``items`` and the token for the next page (None on the last page)."""
    offset = decode_token(token, query)
    size = max_results or DEFAULT_PAGE
    chunk = list(items[offset : offset + size])
    following = offset + size
    return chunk, encode_token(following, query) if following < len(items) else None
