"""Pack files: cache entries appended back to back, read at a known offset, evicted a pack at a time.

A file per frame made every write create a file and every read open one; the per-entry lookup,
not the disk, was most of a warm read (0.61 ms against 0.07 ms for a copy out of a memmap, issue
23). Frames of one series are written and read together, so they are stored together, as MosaicML
Streaming and litdata store samples in shards and chunks:

* each process appends to a pack of its own (:class:`PackWriter`: no lock between writers, no
  fsync; an entry that did not reach the disk whole fails its CRC32 on read and is a miss);
* readers keep one descriptor per pack and read an entry with one ``preadv`` into the buffer
  the decoder or tensor uses (:class:`PackReader`);
* the cache's size limit counts pack bytes; past it the least recently used packs are removed
  whole (:func:`evict_packs`). A pack's modification time is its last use: appends set it, and
  readers touch it at most every :data:`TOUCH_SECONDS`.

Where each entry sits (:class:`Location`) is kept by the frame cache's diskcache index.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from . import entry_format
from .entry_format import CorruptEntry, Parts

SUFFIX = ".pack"
#: How often a reader marks a pack it reads from as used, and looks for packs evicted under it.
TOUCH_SECONDS = 10.0
_LOCATION = struct.Struct("<16sQQ")


@dataclass(frozen=True)
class Location:
    """Where an entry is: its pack (32 hex digits), the offset of its first byte, its length."""

    pack: str
    offset: int
    length: int

    def encode(self) -> bytes:
        return _LOCATION.pack(bytes.fromhex(self.pack), self.offset, self.length)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Location:
        if len(data) != _LOCATION.size:
            raise CorruptEntry("an index value that is not a pack location")
        pack, offset, length = _LOCATION.unpack(data)
        return cls(pack.hex(), offset, length)


def pack_size(limit_bytes: int) -> int:
    """How large a pack grows before the next one starts: 1/64 of the limit, within 64 KiB..64 MiB.

    Eviction frees a pack at a time, so a pack is a small share of the cache; a larger pack
    means fewer descriptors and files.
    """
    return int(min(64 * 2**20, max(64 * 2**10, limit_bytes // 64)))


class PackWriter:
    """Appends entries to this process's open pack, starting another once it holds ``pack_bytes``."""

    def __init__(self, folder: Path, pack_bytes: int) -> None:
        self.folder = folder
        self.pack_bytes = pack_bytes
        self.name: str | None = None
        self._fd = -1
        self._offset = 0

    def append(self, parts: Parts) -> Location:
        """Write one entry at the end of the open pack (raises OSError when the disk refuses)."""
        if self._fd < 0 or self._offset >= self.pack_bytes or self._gone():
            self.start()
        assert self.name is not None
        start, size = self._offset, parts.size
        views = [memoryview(part).cast("B") for part in parts]
        try:
            while views:
                written = os.writev(self._fd, views)
                self._offset += written
                views = _advance(views, written)
        except BaseException:
            self.close()  # where this pack ends is unknown now: the next entry starts a new one
            raise
        return Location(self.name, start, size)

    def _gone(self) -> bool:
        """Whether another process evicted the pack this one is still writing."""
        return os.fstat(self._fd).st_nlink == 0

    def start(self) -> None:
        """Open a new pack for appending (the current one, if any, is closed); raises OSError."""
        self.close()
        self.folder.mkdir(mode=0o700, exist_ok=True)
        name = os.urandom(16).hex()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(self.folder / (name + SUFFIX), flags, 0o600)
        self.name, self._offset = name, 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self.name = -1, None


def _advance(views: list[memoryview], written: int) -> list[memoryview]:
    """What is left of ``views`` after ``written`` bytes went out (writev may write part of them)."""
    while views and written >= len(views[0]):
        written -= len(views[0])
        views = views[1:]
    if views and written:
        views = [views[0][written:], *views[1:]]
    return views


@dataclass
class _OpenPack:
    fd: int
    users: int = 0
    doomed: bool = False  # evicted: closed once its last reader is done
    touched: float = field(default_factory=time.monotonic)


class PackReader:
    """Reads entries with one ``preadv`` each, keeping a descriptor per pack; thread-safe."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._open: dict[str, _OpenPack] = {}
        self._lock = threading.Lock()
        self._swept = time.monotonic()

    def read(self, location: Location) -> bytearray:
        """The entry's bytes; FileNotFoundError once its pack was evicted, CorruptEntry when it is short."""
        pack = self._acquire(location.pack)
        try:
            data = bytearray(location.length)
            got = os.preadv(pack.fd, [data], location.offset)
        finally:
            self._release(pack)
        if got != location.length:
            raise CorruptEntry(f"pack {location.pack} ends before the entry the index places in it")
        return data

    def _acquire(self, name: str) -> _OpenPack:
        now = time.monotonic()
        with self._lock:
            if now - self._swept > TOUCH_SECONDS:
                self._sweep(now)
            pack = self._open.get(name)
            if pack is None:
                fd = os.open(self.folder / (name + SUFFIX), os.O_RDONLY | os.O_CLOEXEC)
                pack = self._open[name] = _OpenPack(fd, touched=now)
                _touch(self.folder / (name + SUFFIX))
            elif now - pack.touched > TOUCH_SECONDS:
                pack.touched = now
                _touch(self.folder / (name + SUFFIX))
            pack.users += 1
            return pack

    def _release(self, pack: _OpenPack) -> None:
        with self._lock:
            pack.users -= 1
            if pack.doomed and pack.users == 0:
                os.close(pack.fd)

    def _sweep(self, now: float) -> None:
        """Let go of packs evicted since the last sweep, so their disk space is freed (lock held)."""
        self._swept = now
        for name, pack in list(self._open.items()):
            if os.fstat(pack.fd).st_nlink == 0:
                del self._open[name]
                pack.doomed = True
                if pack.users == 0:
                    os.close(pack.fd)

    def close(self) -> None:
        with self._lock:
            for pack in self._open.values():
                pack.doomed = True
                if pack.users == 0:
                    os.close(pack.fd)
            self._open.clear()


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):  # evicted meanwhile, or a read-only cache: its packs simply age
        os.utime(path)


def pack_files(folder: Path) -> list[tuple[float, int, str]]:
    """(last use, bytes, name) of every pack in ``folder``, least recently used first."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.endswith(SUFFIX):
            try:
                info = entry.stat()
            except FileNotFoundError:
                continue
            found.append((info.st_mtime, info.st_size, entry.name[: -len(SUFFIX)]))
    return sorted(found)


def evict_packs(folder: Path, limit_bytes: int, keep: set[str], forget: Callable[[str], object]) -> int:
    """Remove least recently used packs until the rest fit in ``limit_bytes``; returns how many.

    ``forget(name)`` drops the pack's entries from the index first, so no reader looks them up
    again; readers that already hold the pack open finish their read. One process evicts at a
    time; the others skip their turn rather than evict the same packs again.
    """
    try:
        with FileLock(str(folder / "evict.lock"), timeout=0):
            packs = pack_files(folder)
            total = sum(size for _, size, _ in packs)
            removed = 0
            for _, size, name in packs:
                if total <= limit_bytes:
                    break
                if name in keep:
                    continue
                forget(name)
                (folder / (name + SUFFIX)).unlink(missing_ok=True)
                total -= size
                removed += 1
            return removed
    except Timeout:
        return 0


def scan_pack(path: Path) -> Iterator[tuple[entry_format.Record, int, int]]:
    """Every intact entry of a pack with its offset and length, up to the first that is not intact."""
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        try:
            size = entry_format.entry_size(memoryview(data)[offset:])
            record = entry_format.unpack(memoryview(data)[offset : offset + size], verify=True)
        except CorruptEntry:
            return
        yield record, offset, size
        offset += size
