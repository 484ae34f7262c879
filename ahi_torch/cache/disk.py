"""A diskcache ``Disk`` that stores bytes only and refuses to unpickle anything.

diskcache's default ``Disk`` pickles non-bytes values and unpickles whatever a row says is a
pickle, so anyone who can write the cache directory could run code in every training process
(CVE-2025-69872). The frame cache's index holds string keys and small byte values (where each
entry sits in its pack), and this disk refuses everything else, on write and on read.
"""

from __future__ import annotations

from typing import Any

from diskcache import Disk
from diskcache.core import MODE_BINARY, MODE_RAW


class UnsafeEntry(RuntimeError):
    """A cache row asks to be unpickled: someone wrote it who was not ahi_torch."""


class BytesOnlyDisk(Disk):
    def put(self, key: Any) -> tuple[Any, bool]:
        if not isinstance(key, str):
            raise TypeError("ahi_torch cache keys are strings")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise UnsafeEntry("refusing to unpickle a cache key")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = None) -> Any:
        if read or not isinstance(value, bytes):
            raise TypeError("ahi_torch cache values are bytes")
        return super().store(value, read, key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode not in (MODE_RAW, MODE_BINARY):
            raise UnsafeEntry("refusing to read a cache value that is not plain bytes")
        return super().fetch(mode, filename, value, read)
