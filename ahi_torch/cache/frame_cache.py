"""FrameCache: a disk cache of frames shared by every DataLoader worker on a node.

>>> from ahi_torch.cache import FrameCache
>>> cache = FrameCache("~/.cache/ahi_torch", size_limit_gb=50, mode="decoded")

Frames live in append-only pack files (:mod:`.packs`); a diskcache index (SQLite) says where
each one is. The cache keeps these guarantees:

* keys name data store, image set, **version**, frame and resolution, so an updated image set
  never serves stale pixels;
* entries are bytes in the :mod:`.entry_format` format, each naming its own key; nothing is
  pickled and index rows that ask to be unpickled are refused (:mod:`.disk`);
* every read checks the entry's CRC32 (and its key); a corrupt entry is dropped and reported as
  a miss. Packs are not fsynced: the CRC is what makes a torn write harmless;
* writes leave the fetch thread at once: one writer thread per process appends to its own pack
  and indexes a batch per SQLite transaction (:mod:`.writer`);
* the size limit counts pack bytes; beyond it whole packs go, least recently used first;
* the index opens lazily in each process (after fork), the first open of a directory is
  serialised by a file lock, and the directory is created ``0700``;
* a cache never takes training down: a full disk (or any write error) turns storing off with
  one warning while reads carry on, and a directory that cannot be created, opened or read (read
  only, someone else's, a damaged index) turns the whole cache off with one warning, so frames
  are served uncached. ``COUNTERS.cache_unavailable`` counts the lookups that went uncached;
  ``ahi-torch cache repair`` rebuilds a damaged index from the packs;
* a cache directory of the earlier one-file-per-frame layout is emptied once, with a warning;
  its entries are never read as entries of this one;
* ``mode="decoded"`` stores pixels (fastest reads), ``mode="encoded"`` stores AHI's HTJ2K bytes
  (about half the space, decoded on every read). The benchmark suite measures both. Which one is
  the cache's own business: callers store and load frames with :meth:`FrameCache.put_frame` and
  :meth:`FrameCache.get_frame` and never branch on the mode.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from diskcache import Cache
from diskcache.core import DBNAME
from filelock import FileLock

from ..counters import COUNTERS
from ..errors import CacheError, ConfigError
from ..per_process import PerProcess
from . import entry_format
from .disk import BytesOnlyDisk, UnsafeEntry
from .packs import SUFFIX, Location, PackReader, PackWriter, evict_packs, pack_files, pack_size
from .writer import EntryWriter

log = logging.getLogger(__name__)

#: Serialises the first open of a cache directory (diskcache's schema DDL can collide).
LOCK_NAME = "open.lock"
#: The diskcache index and the packs, each in a folder of its own: diskcache's ``check(fix=True)``
#: deletes every file of its folder that it does not know.
INDEX, PACKS = "index", "packs"
MODES = ("decoded", "encoded")


class CacheUnavailableWarning(UserWarning):
    """The frame cache cannot be used (or can no longer store); frames are served uncached."""


def default_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ahi_torch" / "frames"


@dataclass(frozen=True)
class FrameKey:
    """Which frame, at which version and resolution: everything a cached frame is looked up by."""

    datastore_id: str
    image_set_id: str
    version: int
    frame_id: str
    reduce: int = 0

    def text(self, kind: str) -> str:
        return frame_key(kind, self.datastore_id, self.image_set_id, self.version, self.frame_id, self.reduce)


def frame_key(kind: str, datastore_id: str, image_set_id: str, version: int, frame_id: str, reduce: int = 0) -> str:
    return f"{kind}/{datastore_id}/{image_set_id}/v{version}/{frame_id}/r{reduce}"


#: Decodes an encoded frame read from the cache: ``decode(data, content_type)``.
FrameDecoder = Callable[[bytes, str], np.ndarray]


class _ProcessState:
    """What one process holds of a cache: its index handle, pack reader and writer, and whether it works."""

    def __init__(self) -> None:
        self.index: Cache | None = None
        self.reader: PackReader | None = None
        self.writer: EntryWriter | None = None
        self.lock = threading.Lock()
        self.storing = True
        self.broken: str | None = None  # why this process cannot use the cache at all
        self.write_failure: str | None = None  # said once by the next caller to store or flush
        self.since_eviction = 0  # pack bytes written since this process last checked the limit


class FrameCache:
    """A shared, size-limited, pickle-free disk cache of frames.

    Args:
        directory: cache root (default ``$XDG_CACHE_HOME/ahi_torch/frames``); keep it on a local
            disk, one per node: SQLite locking is unreliable on network filesystems.
        size_limit_gb: limit of the packs' bytes; least recently used packs go beyond it.
        mode: ``"decoded"`` or ``"encoded"`` (see the module docstring).
        verify_reads: check each entry's CRC32 on read (on by default).
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        size_limit_gb: float = 20.0,
        mode: str = "decoded",
        verify_reads: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"cache mode must be one of {', '.join(MODES)}, not {mode!r}")
        if size_limit_gb <= 0:
            raise ConfigError(f"size_limit_gb must be positive, not {size_limit_gb}")
        self.directory = Path(directory).expanduser() if directory else default_directory()
        self.size_limit = int(size_limit_gb * 1024**3)
        self.pack_bytes = pack_size(self.size_limit)
        self.mode = mode
        self.verify_reads = verify_reads
        self._process = PerProcess(_ProcessState)

    def __repr__(self) -> str:
        return f"FrameCache({str(self.directory)!r}, mode={self.mode!r}, size_limit={self.size_limit / 1024**3:g} GiB)"

    @property
    def reads_decode(self) -> bool:
        """Whether a hit costs a decode (encoded mode) rather than a lookup and a copy."""
        return self.mode == "encoded"

    def __getstate__(self) -> dict[str, Any]:
        self.flush()  # what this process queued is on disk before another process looks
        return dict(self.__dict__)

    @property
    def _packs(self) -> Path:
        return self.directory / PACKS

    @property
    def _cache(self) -> Cache | None:
        """This process's open index handle, if it opened one (nothing is opened)."""
        state = self._process.current()
        return state.index if state is not None else None

    # --- opening ----------------------------------------------------------------------------------

    @property
    def diskcache(self) -> Cache:
        """This process's diskcache index (opened on first use, again after fork); raises if it cannot open."""
        state = self._process.get()
        if state.index is None:
            with state.lock:
                if state.index is None:
                    state.index = self._open()
                    state.reader = PackReader(self._packs)
                    state.storing, state.broken = True, None
        return state.index

    def _open(self) -> Cache:
        existed = self.directory.exists()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not existed:
            self.directory.chmod(0o700)  # mkdir's mode is masked by the umask
        with FileLock(str(self.directory / LOCK_NAME), timeout=120):
            _empty_one_file_layout(self.directory)
            return Cache(
                str(self.directory / INDEX),
                timeout=60,
                disk=BytesOnlyDisk,
                size_limit=2**62,  # the packs hold the bytes and the limit (evict_packs)
                eviction_policy="none",
                tag_index=True,  # an entry's tag is its pack: evicting a pack drops its entries at once
                statistics=0,
            )

    @property
    def available(self) -> bool:
        """Whether this process can use the cache (False after it was switched off)."""
        return self._handle() is not None

    @property
    def problem(self) -> str | None:
        """Why the cache is off in this process, or None."""
        state = self._process.current()
        return state.broken if state is not None else None

    def _handle(self) -> Cache | None:
        """The index handle, or None when this process cannot use the cache (warned once)."""
        if self._process.get().broken is not None:
            return None
        try:
            return self.diskcache
        except Exception as error:  # PermissionError, sqlite3.DatabaseError, Timeout...
            self._switch_off(error)
            return None

    def _switch_off(self, error: BaseException) -> None:
        state = self._process.get()
        with state.lock:
            if state.broken is not None:
                return
            state.broken = f"{type(error).__name__}: {error}"
            state.index = None
        message = f"frame cache at {self.directory} is unavailable, frames are served uncached ({state.broken})"
        log.warning("%s", message)
        warnings.warn(message, CacheUnavailableWarning, stacklevel=4)

    def flush(self) -> None:
        """Wait until this process's queued entries are written and indexed."""
        state = self._process.current()
        if state is not None and state.writer is not None:
            state.writer.flush()
            self._say_write_failure(state)

    def close(self) -> None:
        """Write what is queued and let go of the index and the packs (reopened on the next use)."""
        self.flush()
        state = self._process.current()
        if state is None:
            return
        with state.lock:
            if state.writer is not None:
                state.writer.stop()
                state.writer = None
            if state.reader is not None:
                state.reader.close()
                state.reader = None
            if state.index is not None:
                state.index.close()
                state.index = None

    # --- raw get/set ------------------------------------------------------------------------------

    def _get(self, key: str) -> bytes | bytearray | None:
        """The entry's bytes, or None on a miss (counted) or when the cache is off."""
        state = self._process.get()
        queued = state.writer.pending(key) if state.writer is not None else None
        if queued is not None:
            return bytearray().join(queued)  # a copy: the caller may write to what it gets
        cache = self._handle()
        if cache is None:
            COUNTERS.cache_unavailable += 1
            return None
        try:
            value = cache.get(key, default=None, retry=True)
        except UnsafeEntry:
            log.warning("evicting a cache entry that is not in ahi_torch's format: %s", key)
            self._evict(key)
            return None
        except Exception as error:  # a damaged database, a vanished directory
            self._switch_off(error)
            COUNTERS.cache_unavailable += 1
            return None
        if value is None:
            COUNTERS.cache_misses += 1
            return None
        return self._read_pack(key, value, state)

    def _read_pack(self, key: str, value: bytes, state: _ProcessState) -> bytearray | None:
        try:
            location = Location.decode(value)
            assert state.reader is not None  # opened with the index
            data = state.reader.read(location)
        except FileNotFoundError:  # its pack was evicted after the lookup
            COUNTERS.cache_misses += 1
            return None
        except (entry_format.CorruptEntry, OSError) as error:
            log.warning("evicting cache entry %s: %s", key, error)
            self._evict(key)
            return None
        COUNTERS.cache_bytes_read += len(data)
        return data

    def _set(self, key: str, parts: entry_format.Parts) -> bool:
        """Queue an entry for this process's writer; False when this process no longer stores."""
        state = self._process.get()
        self._say_write_failure(state)
        if not state.storing or self._handle() is None:
            return False
        writer = state.writer
        if writer is None:
            with state.lock:
                if state.writer is None:
                    state.writer = self._start_writer(state)
                writer = state.writer
            if writer is None:
                return False
        writer.put(key, parts)
        COUNTERS.cache_bytes_written += parts.size
        return True

    def _start_writer(self, state: _ProcessState) -> EntryWriter | None:
        """This process's writer; a folder where no pack can be made stops storing here and now."""
        packs = PackWriter(self._packs, self.pack_bytes)
        try:
            packs.start()  # fails here and now on a read-only disk, not later on the writer thread
        except OSError as error:
            self._stop_storing(state, error)
            self._say_write_failure(state)
            return None
        return EntryWriter(
            packs,
            self._commit,
            on_error=lambda error: self._stop_storing(state, error),
            on_stop=lambda: state.index.close() if state.index is not None else None,
        )

    def _commit(self, batch: list[tuple[str, Location, int]]) -> None:
        """Index a batch that reached its packs (on the writer thread), then keep to the size limit."""
        cache = self.diskcache
        with cache.transact(retry=True):
            for key, location, _ in batch:
                cache.set(key, location.encode(), tag=location.pack, retry=True)
        COUNTERS.cache_writes += len(batch)
        state = self._process.get()
        state.since_eviction += sum(size for _, _, size in batch)
        if state.since_eviction >= self.pack_bytes // 2:
            state.since_eviction = 0
            writer = state.writer
            keep = {writer.packs.name} if writer is not None and writer.packs.name else set()
            COUNTERS.cache_packs_evicted += evict_packs(
                self._packs, self.size_limit, keep, lambda pack: cache.evict(pack, retry=True)
            )

    def _stop_storing(self, state: _ProcessState, error: BaseException) -> None:
        COUNTERS.cache_write_failures += 1
        state.storing = False
        message = f"frame cache at {self.directory} stopped storing, reads carry on ({error})"
        log.warning("%s", message)
        state.write_failure = message

    def _say_write_failure(self, state: _ProcessState) -> None:
        """Warn in the caller's thread (the writer's warnings would reach no one)."""
        message, state.write_failure = state.write_failure, None
        if message is not None:
            warnings.warn(message, CacheUnavailableWarning, stacklevel=4)

    def _evict(self, key: str) -> None:
        COUNTERS.cache_corrupt_evicted += 1
        COUNTERS.cache_misses += 1
        try:
            self.diskcache.delete(key, retry=True)
        except Exception as error:  # a read-only cache keeps its corrupt entry; it is never served
            log.warning("could not evict corrupt cache entry %s: %s", key, error)

    # --- frames -----------------------------------------------------------------------------------

    def get_frame(self, key: FrameKey, decode: FrameDecoder) -> np.ndarray | None:
        """A frame's pixels, or None on a miss; an encoded entry is decoded with ``decode``.

        Entries are checked on read (their CRC32), so what comes back is what was stored: pixels
        that matched AHI's checksum, or the bytes they were decoded from.
        """
        if self.mode == "decoded":
            return self._get_array(key.text("decoded"))
        found = self._get_bytes(key.text("encoded"), entry_format.ENCODED)
        if found is None:
            return None
        return decode(found[0], str(found[1].get("content_type") or ""))

    def put_frame(
        self, key: FrameKey, pixels: np.ndarray, data: bytes, content_type: str, crc: int | None = None
    ) -> bool:
        """Store a frame in this cache's mode: its ``pixels`` (``crc`` is their CRC32 when known) or ``data``.

        The frame is queued for this process's writer: leave ``pixels`` unchanged (a frame changed
        before it is written fails its CRC on read and is a miss, never wrong pixels).
        """
        if self.mode == "decoded":
            text = key.text("decoded")
            return self._set(text, entry_format.pack_array(pixels, text, crc))
        text = key.text("encoded")
        return self._set(text, entry_format.pack_encoded(data, content_type, text))

    # --- typed entries by their text key: what get_frame/put_frame are made of (and the storage tests read) --

    def _record(self, key: str) -> entry_format.Record | None:
        data = self._get(key)
        if data is None:
            return None
        try:
            record = entry_format.unpack(data, verify=self.verify_reads)
            if record.key != key:
                raise entry_format.CorruptEntry(f"the entry found there is {record.key!r}")
        except entry_format.CorruptEntry as error:
            log.warning("evicting corrupt cache entry %s: %s", key, error)
            self._evict(key)
            return None
        return record

    def _get_array(self, key: str) -> np.ndarray | None:
        """A decoded frame, or None on a miss (a corrupt entry is evicted and counts as a miss)."""
        record = self._record(key)
        if record is None:
            return None
        try:
            array = entry_format.record_array(record)
        except entry_format.CorruptEntry as error:
            log.warning("evicting corrupt cache entry %s: %s", key, error)
            self._evict(key)
            return None
        COUNTERS.cache_hits += 1
        return array

    def _put_array(self, key: str, pixels: np.ndarray) -> bool:
        return self._set(key, entry_format.pack_array(pixels, key))

    def _get_bytes(self, key: str, kind: int = entry_format.ENCODED) -> tuple[bytes, dict[str, Any]] | None:
        """An encoded frame's bytes with their header, or None on a miss."""
        record = self._record(key)
        if record is None:
            return None
        if record.kind != kind:
            log.warning("evicting cache entry %s: it holds another kind of entry", key)
            self._evict(key)
            return None
        COUNTERS.cache_hits += 1
        header = {name: value for name, value in record.header.items() if name != "key"}
        return bytes(record.payload), header

    # --- maintenance ------------------------------------------------------------------------------

    def _maintenance_handle(self) -> Cache:
        try:
            return self.diskcache
        except Exception as error:
            raise CacheError(
                f"frame cache at {self.directory} cannot be opened ({type(error).__name__}: {error}); "
                "run `ahi-torch cache repair`"
            ) from error

    def stats(self) -> dict[str, Any]:
        """Entries and bytes on disk, shared by every process (lookups are counted in ``COUNTERS``)."""
        cache = self._maintenance_handle()
        self.flush()
        try:
            entries, index_bytes = len(cache), cache.volume()
        except Exception as error:
            raise CacheError(
                f"frame cache at {self.directory} is damaged ({error}); run `ahi-torch cache repair`"
            ) from error
        packs = pack_files(self._packs)
        pack_bytes = sum(size for _, size, _ in packs)
        state = self._process.get()
        return {
            "directory": str(self.directory),
            "mode": self.mode,
            "entries": entries,
            "packs": len(packs),
            "pack_bytes": pack_bytes,
            "volume_bytes": pack_bytes + index_bytes,
            "size_limit_bytes": self.size_limit,
            "storing": state.storing and state.broken is None,
        }

    def clear(self) -> int:
        """Remove every entry and every pack (files of ahi_torch's own making only); returns how many entries."""
        self.close()
        cache = self._maintenance_handle()
        removed = len(cache)
        cache.clear(retry=True)
        for _, _, name in pack_files(self._packs):
            (self._packs / (name + SUFFIX)).unlink(missing_ok=True)
        return int(removed)

    def check(self, fix: bool = True) -> list[str]:
        """Check the index (diskcache's own check) and drop entries whose pack is gone; returns what it found."""
        cache = self._maintenance_handle()
        self.flush()
        found = [str(w.message) for w in cache.check(fix=fix, retry=True)]
        present = {name for _, _, name in pack_files(self._packs)}
        for key in list(cache.iterkeys()):
            value = cache.get(key, retry=True)
            try:
                gone = value is not None and Location.decode(value).pack not in present
            except entry_format.CorruptEntry:
                gone = True
            if gone:
                found.append(f"entry {key} points to a pack that is not there")
                if fix:
                    cache.delete(key, retry=True)
        return found

    def keys(self) -> list[str]:
        self.flush()
        return [str(k) for k in self._maintenance_handle().iterkeys()]


def _empty_one_file_layout(directory: Path) -> None:
    """Remove the entries of the layout before packs (``cache.db`` and a file per frame), saying so once.

    Its entries would be read as locations and refused; emptying it frees the space. Only what
    that layout's own database lists is removed (diskcache's ``clear``), then the database.
    """
    database = directory / DBNAME
    if not database.exists():
        return
    try:
        old = Cache(str(directory), disk=BytesOnlyDisk, eviction_policy="none", size_limit=2**62)
        count = len(old)
        old.clear(retry=True)
        old.close()
    except Exception as error:  # a damaged old database: leave it, it is never read
        log.warning("frame cache at %s holds an older layout that could not be emptied (%s)", directory, error)
        return
    for name in (DBNAME, f"{DBNAME}-wal", f"{DBNAME}-shm"):  # diskcache's clear removed its files and folders
        (directory / name).unlink(missing_ok=True)
    message = (
        f"frame cache at {directory} used the one-file-per-frame layout of earlier ahi_torch versions: "
        f"its {count} entries were removed, and it fills again as packs"
    )
    log.warning("%s", message)
    warnings.warn(message, CacheUnavailableWarning, stacklevel=6)
