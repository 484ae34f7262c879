"""Rebuild a damaged frame cache index from its packs, keeping every entry that still checks out.

A crash, a full disk or a bad sector can leave the index (``index/cache.db``) with damaged pages;
diskcache then fails on open or on some lookups. The packs do not need it to be read: each entry
names its key and carries its CRC32 (:mod:`.entry_format`). :func:`repair_cache` moves the damaged
database aside as ``cache.db.damaged-<time>``, reads every pack from start to end and indexes
each intact entry in a fresh database; a pack's damaged tail is dropped. Stop training jobs that
use the cache first.

>>> report = repair_cache(FrameCache("runs/cache"))
>>> report.kept, report.dropped
(4093, 3)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from diskcache.core import DBNAME
from filelock import FileLock

from .frame_cache import INDEX, LOCK_NAME, PACKS, FrameCache
from .packs import SUFFIX, Location, pack_files, scan_pack


@dataclass(frozen=True)
class RepairReport:
    """What a repair kept and dropped, and where the damaged database went."""

    kept: int
    dropped: int
    backup: Path | None


def _move_aside(database: Path) -> Path | None:
    if not database.exists():
        return None
    backup = database.with_name(f"{DBNAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    database.replace(backup)
    for suffix in ("-wal", "-shm"):
        sidecar = database.with_name(DBNAME + suffix)
        if sidecar.exists():
            sidecar.replace(backup.with_name(backup.name + suffix))
    return backup


def repair_cache(cache: FrameCache) -> RepairReport:
    """Rebuild ``cache``'s index from its packs (see the module docstring)."""
    directory = cache.directory
    folder = directory / PACKS
    cache.close()  # writes what this process queued first, so its last pack is read too
    packs = pack_files(folder)
    if not (directory / INDEX / DBNAME).exists() and not packs:
        return RepairReport(0, 0, None)
    with FileLock(str(directory / LOCK_NAME), timeout=120):
        backup = _move_aside(directory / INDEX / DBNAME)
    fresh = FrameCache(directory, size_limit_gb=cache.size_limit / 1024**3, mode=cache.mode)
    index = fresh.diskcache
    kept = dropped = 0
    for _, size, name in packs:
        end = 0
        with index.transact(retry=True):
            for record, offset, length in scan_pack(folder / (name + SUFFIX)):
                index.set(record.key, Location(name, offset, length).encode(), tag=name, retry=True)
                kept, end = kept + 1, offset + length
        dropped += end < size  # a damaged entry ends what can be read of a pack
    fresh.close()
    return RepairReport(kept, dropped, backup)
