"""One digest of Arrow content: SHA-256 over labelled, length-prefixed byte parts.

Two callers choose their parts: a saved index's integrity check hashes values as the text they
stand for, so every storage format digests alike (:mod:`.frame_index`); a node's shared table is
named by the buffers it maps, so a layout change is a new name (:mod:`.shared_table`).

>>> content_digest(b"header", [("column\\n", [b"values", np.arange(3)])])[:12]
'f1d0a48ec7ce'
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

#: A part: bytes, or an array hashed as its contiguous bytes.
Part = bytes | memoryview | np.ndarray


def content_digest(header: bytes, sections: Iterable[tuple[str, Iterable[Part]]]) -> str:
    """Hex SHA-256 of ``header``, then per section a newline, its label, and each part's byte length and bytes."""
    digest = hashlib.sha256(header)
    for label, parts in sections:
        digest.update(f"\n{label}".encode())
        for part in parts:
            data = np.ascontiguousarray(part).view(np.uint8).reshape(-1).data if isinstance(part, np.ndarray) else part
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()
