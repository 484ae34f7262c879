"""A diskcache ``Disk`` that stores bytes only, refuses to unpickle anything, and moves bytes once.

diskcache's default ``Disk`` pickles non-bytes values and unpickles whatever a row says is a
pickle, so anyone who can write the cache directory can run code in every training process
(CVE-2025-69872). This disk accepts ``str`` keys and ``bytes`` values only, and raises on any
row that claims another encoding.

It also stores and reads large values the cheap way. diskcache writes a ``bytes`` value by
iterating over ``io.BytesIO(value)``, which yields *lines*: a 512 KB frame of pixels became about
900 small writes (3 ms). Here a value is written with one ``write`` per part (:class:`Parts` lets
the caller hand over header and payload without joining them) and read back with one
``readinto`` into a ``bytearray``, so the decoded pixels can be used in place (writable) without
another copy.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from diskcache import Disk
from diskcache.core import MODE_BINARY, MODE_RAW


class UnsafeEntry(RuntimeError):
    """A cache row asks to be unpickled: someone wrote it who was not ahi_torch."""


class Parts(tuple[bytes | memoryview, ...]):
    """A value given as consecutive buffers (header, payload): stored as their concatenation."""

    @property
    def size(self) -> int:
        return sum(memoryview(part).nbytes for part in self)


class BytesOnlyDisk(Disk):
    def put(self, key: Any) -> tuple[Any, bool]:
        if not isinstance(key, str):
            raise TypeError("ahi_torch cache keys are strings")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise UnsafeEntry("refusing to unpickle a cache key")
        return super().get(key, raw)

    def filename(self, key: Any = None, value: Any = None) -> tuple[str, str]:
        """A random name in one of 256 folders (diskcache spreads over 65536, two levels deep).

        With diskcache's layout a cache of fewer than about 100 000 entries creates a folder for
        nearly every entry it stores, and a mkdir costs as much CPU as writing the frame. 256
        folders all exist after the first few hundred entries and hold about 4000 files per
        million entries. Entries keep the name they were stored under, so older layouts read on.
        """
        hex_name = os.urandom(16).hex()
        filename = os.path.join(hex_name[:2], hex_name[2:] + ".val")  # noqa: PTH118 - diskcache stores text
        return filename, os.path.join(self._directory, filename)  # noqa: PTH118

    def store(self, value: Any, read: bool, key: Any = None) -> Any:
        if read or not isinstance(value, bytes | Parts):
            raise TypeError("ahi_torch cache values are bytes")
        parts = value if isinstance(value, Parts) else (value,)
        size = value.size if isinstance(value, Parts) else len(value)
        if size < self.min_file_size:
            return 0, MODE_RAW, None, sqlite3.Binary(b"".join(parts))
        filename, full_path = self.filename(key, value)
        try:
            # Open first: the two-level folders exist after the first few hundred entries, and
            # diskcache's makedirs-then-open costs a failing mkdir per write.
            writer = Path(full_path).open("xb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            self._write(full_path, parts, "xb")  # creates the folders (and retries as diskcache does)
        else:
            with writer:
                for part in parts:
                    writer.write(part)
        return size, MODE_BINARY, filename, None

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode not in (MODE_RAW, MODE_BINARY):
            raise UnsafeEntry("refusing to read a cache value that is not plain bytes")
        if mode == MODE_RAW or read or filename is None:
            return super().fetch(mode, filename, value, read)
        with (Path(self._directory) / filename).open("rb", buffering=0) as reader:
            size = os.fstat(reader.fileno()).st_size
            data = bytearray(size)
            view, done = memoryview(data), 0
            while done < size:
                got = reader.readinto(view[done:])
                if not got:  # the file shrank under us: the entry's CRC check rejects it
                    del data[done:]
                    break
                done += got
        return data
