"""Rebuild a damaged frame cache database, keeping every entry that still reads and checks out.

A crash, a full disk or a bad sector can leave ``cache.db`` with damaged pages; diskcache then
fails on open or on some lookups. :func:`repair_cache` reads the old database row by row
(skipping what cannot be read), checks each entry's CRC32 in the :mod:`.entry_format` format, moves
the damaged database aside as ``cache.db.damaged-<time>`` and writes the intact entries into a
fresh one. Value files that belonged to lost or corrupt entries are removed by diskcache's own
consistency check. Stop training jobs that use the cache first.

>>> report = repair_cache(FrameCache("runs/cache"))
>>> report.kept, report.dropped
(4093, 3)
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from diskcache.core import MODE_BINARY, MODE_RAW
from filelock import FileLock

from . import entry_format
from .frame_cache import LOCK_NAME, FrameCache

DATABASE = "cache.db"


@dataclass(frozen=True)
class RepairReport:
    """What a repair kept and dropped, and where the damaged database went."""

    kept: int
    dropped: int
    unreadable_rows: int
    backup: Path | None


def _rows(database: Path) -> tuple[list[tuple[str, int, str | None, bytes | None]], int]:
    """(key, mode, filename, inline value) of every row that can be read, and how many could not."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    rows: list[tuple[str, int, str | None, bytes | None]] = []
    unreadable = 0
    last, step = 0, 1
    try:
        while True:
            try:
                row = connection.execute(
                    "SELECT rowid, key, mode, filename, value FROM Cache WHERE rowid > ? ORDER BY rowid LIMIT 1",
                    (last,),
                ).fetchone()
            except sqlite3.DatabaseError:
                # A damaged page: jump over it, further each time, until rows read again.
                unreadable += 1
                last += step
                step = min(step * 2, 1 << 20)
                if unreadable > 64:
                    break
                continue
            if row is None:
                break
            last, step = int(row[0]), 1
            rows.append((str(row[1]), int(row[2]), row[3], row[4]))
    finally:
        connection.close()
    return rows, unreadable


def _value(directory: Path, mode: int, filename: str | None, value: bytes | None) -> bytes | None:
    if mode == MODE_RAW and value is not None:
        return bytes(value)
    if mode == MODE_BINARY and filename:
        try:
            return (directory / filename).read_bytes()
        except OSError:
            return None
    return None  # anything else was not written by ahi_torch


def repair_cache(cache: FrameCache) -> RepairReport:
    """Rebuild ``cache``'s database from its intact entries (see the module docstring)."""
    directory = cache.directory
    database = directory / DATABASE
    if not database.exists():
        return RepairReport(0, 0, 0, None)
    cache.close()
    with FileLock(str(directory / LOCK_NAME), timeout=120):
        try:
            rows, unreadable = _rows(database)
        except sqlite3.DatabaseError:
            rows, unreadable = [], 1  # not even the schema reads: nothing to keep
        intact: list[tuple[str, bytes]] = []
        for key, mode, filename, value in rows:
            data = _value(directory, mode, filename, value)
            try:
                if data is not None:
                    entry_format.unpack(data, verify=True)
                    intact.append((key, data))
            except entry_format.CorruptEntry:
                continue
        backup = database.with_name(f"{DATABASE}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        database.replace(backup)  # the name keeps "cache.db": diskcache's check leaves it alone
        for suffix in ("-wal", "-shm"):
            sidecar = database.with_name(DATABASE + suffix)
            if sidecar.exists():
                sidecar.replace(backup.with_name(backup.name + suffix))
    fresh = FrameCache(directory, size_limit_gb=cache.size_limit / 1024**3, mode=cache.mode)
    handle = fresh.diskcache
    for key, data in intact:
        handle.set(key, data, retry=True)
    handle.check(fix=True, retry=True)  # removes value files of dropped entries, empty folders
    fresh.close()
    return RepairReport(len(intact), len(rows) - len(intact), unreadable, backup)
