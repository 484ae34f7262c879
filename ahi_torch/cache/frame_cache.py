"""FrameCache: a disk cache of frames and metadata shared by every DataLoader worker on a node.

>>> from ahi_torch.cache import FrameCache
>>> cache = FrameCache("~/.cache/ahi_torch", size_limit_gb=50, mode="decoded")

Built on diskcache (SQLite index + files), with these guarantees:

* keys name data store, image set, **version**, frame and resolution, so an updated image set
  never serves stale pixels;
* values are bytes in the :mod:`.entry_format` format; nothing is pickled and rows that ask to be
  unpickled are refused (:mod:`.disk`);
* every read checks the entry's CRC32; a corrupt entry is evicted and reported as a miss;
* the SQLite connection opens lazily in each process (after fork), the first open of a
  directory is serialised by a file lock, and the directory is created ``0700``;
* a cache never takes training down: a full disk (or any write error) turns storing off with
  one warning while reads carry on, and a directory that cannot be created, opened or read (read
  only, someone else's, a damaged ``cache.db``) turns the whole cache off with one warning, so
  frames are served uncached. ``counters.unavailable`` counts the lookups that went uncached;
  ``ahi-torch cache repair`` rebuilds a damaged database from its intact entries;
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from diskcache import Cache
from filelock import FileLock

from ..errors import CacheError, ConfigError
from ..per_process import PerProcess
from . import entry_format
from .disk import BytesOnlyDisk, UnsafeEntry

log = logging.getLogger(__name__)

#: diskcache's ``check(fix=True)`` deletes every file it does not know, except those whose path
#: contains "cache.db": the open lock is named so that a repair never removes a lock in use.
LOCK_NAME = "cache.db.open-lock"
MODES = ("decoded", "encoded")


class CacheUnavailableWarning(UserWarning):
    """The frame cache cannot be used (or can no longer store); frames are served uncached."""


EVICTION_POLICIES = ("least-recently-stored", "least-recently-used", "least-frequently-used")


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


@dataclass
class CacheCounters:
    """Per-process counters (each DataLoader worker keeps its own)."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    corrupt_evicted: int = 0
    write_failures: int = 0
    unavailable: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class _ProcessState:
    """What one process holds of a cache: its handle, its locks, and whether it stores or works at all."""

    def __init__(self) -> None:
        self.cache: Cache | None = None
        self.lock = threading.Lock()
        #: One writer per process at a time (see FrameCache._set).
        self.write_lock = threading.Lock()
        self.storing = True
        self.broken: str | None = None  # why this process cannot use the cache at all


class FrameCache:
    """A shared, size-limited, pickle-free disk cache of frames and metadata documents.

    Args:
        directory: cache root (default ``$XDG_CACHE_HOME/ahi_torch/frames``); keep it on a local
            disk, one per node: SQLite locking is unreliable on network filesystems.
        size_limit_gb: soft limit; the oldest entries are culled beyond it.
        mode: ``"decoded"`` or ``"encoded"`` (see the module docstring).
        eviction_policy: diskcache's policy; ``least-recently-stored`` is the fastest
            (``least-recently-used`` makes every read a write).
        verify_reads: check each entry's CRC32 on read (on by default).
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        size_limit_gb: float = 20.0,
        mode: str = "decoded",
        eviction_policy: str = "least-recently-stored",
        verify_reads: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"cache mode must be one of {', '.join(MODES)}, not {mode!r}")
        if eviction_policy not in EVICTION_POLICIES:
            raise ConfigError(f"eviction_policy must be one of {', '.join(EVICTION_POLICIES)}, not {eviction_policy!r}")
        if size_limit_gb <= 0:
            raise ConfigError(f"size_limit_gb must be positive, not {size_limit_gb}")
        self.directory = Path(directory).expanduser() if directory else default_directory()
        self.size_limit = int(size_limit_gb * 1024**3)
        self.mode = mode
        self.eviction_policy = eviction_policy
        self.verify_reads = verify_reads
        self.counters = CacheCounters()
        self._process = PerProcess(_ProcessState)

    def __repr__(self) -> str:
        return f"FrameCache({str(self.directory)!r}, mode={self.mode!r}, size_limit={self.size_limit / 1024**3:g} GiB)"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "counters": CacheCounters()}  # each process counts its own

    @property
    def _cache(self) -> Cache | None:
        """This process's open handle, if it opened one (nothing is opened)."""
        state = self._process.current()
        return state.cache if state is not None else None

    # --- opening ----------------------------------------------------------------------------------

    @property
    def diskcache(self) -> Cache:
        """This process's diskcache handle (opened on first use, again after fork); raises if it cannot open."""
        state = self._process.get()
        if state.cache is None:
            with state.lock:
                if state.cache is None:
                    state.cache = self._open()
                    state.storing, state.broken = True, None
        return state.cache

    def _open(self) -> Cache:
        existed = self.directory.exists()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not existed:
            self.directory.chmod(0o700)  # mkdir's mode is masked by the umask
        # diskcache's first open runs schema DDL; concurrent first opens can collide.
        with FileLock(str(self.directory / LOCK_NAME), timeout=120):
            return Cache(
                str(self.directory),
                timeout=60,
                disk=BytesOnlyDisk,
                size_limit=self.size_limit,
                eviction_policy=self.eviction_policy,
                cull_limit=10,
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
        """The diskcache handle, or None when this process cannot use the cache (warned once)."""
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
            state.cache = None
        message = f"frame cache at {self.directory} is unavailable, frames are served uncached ({state.broken})"
        log.warning("%s", message)
        warnings.warn(message, CacheUnavailableWarning, stacklevel=4)

    def close(self) -> None:
        state = self._process.current()
        if state is not None and state.cache is not None:
            state.cache.close()
            state.cache = None

    # --- raw get/set ------------------------------------------------------------------------------

    def _get(self, key: str) -> bytes | bytearray | None:
        cache = self._handle()
        if cache is None:
            self.counters.unavailable += 1
            return None
        try:
            value = cache.get(key, default=None, retry=True)
        except UnsafeEntry:
            log.warning("evicting a cache entry that is not in ahi_torch's format: %s", key)
            self._evict(key)
            return None
        except Exception as error:  # a damaged database, a vanished directory
            self._switch_off(error)
            self.counters.unavailable += 1
            return None
        if value is None:
            self.counters.misses += 1
            return None
        data = value if isinstance(value, bytes | bytearray) else bytes(value)
        self.counters.bytes_read += len(data)
        return data

    def _set(self, key: str, data: bytes | entry_format.Parts) -> bool:
        state = self._process.get()
        if not state.storing:
            return False
        cache = self._handle()
        if cache is None:
            return False
        try:
            # One writer per process at a time: threads racing for SQLite's write lock lose
            # milliseconds in its busy-wait backoff; other processes still take turns in SQLite.
            with state.write_lock:
                stored = bool(cache.set(key, data, retry=True))
        except Exception as error:  # sqlite3.OperationalError, Timeout, ENOSPC, read-only...
            self.counters.write_failures += 1
            state.storing = False
            message = f"frame cache at {self.directory} stopped storing, reads carry on ({error})"
            log.warning("%s", message)
            warnings.warn(message, CacheUnavailableWarning, stacklevel=3)
            return False
        if stored:
            self.counters.writes += 1
            self.counters.bytes_written += data.size if isinstance(data, entry_format.Parts) else len(data)
        return stored

    def _evict(self, key: str) -> None:
        self.counters.corrupt_evicted += 1
        self.counters.misses += 1
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
            return self.get_array(key.text("decoded"))
        found = self.get_bytes(key.text("encoded"), entry_format.ENCODED)
        if found is None:
            return None
        return decode(found[0], str(found[1].get("content_type") or ""))

    def put_frame(
        self, key: FrameKey, pixels: np.ndarray, data: bytes, content_type: str, crc: int | None = None
    ) -> bool:
        """Store a frame in this cache's mode: its ``pixels`` (``crc`` is their CRC32 when known) or ``data``."""
        if self.mode == "decoded":
            return self._set(key.text("decoded"), entry_format.pack_array(pixels, crc))
        return self._set(
            key.text("encoded"), entry_format.pack(entry_format.ENCODED, {"content_type": content_type}, data)
        )

    # --- typed entries ----------------------------------------------------------------------------

    def get_array(self, key: str) -> np.ndarray | None:
        """A decoded frame, or None on a miss (a corrupt entry is evicted and counts as a miss)."""
        data = self._get(key)
        if data is None:
            return None
        try:
            array = entry_format.unpack_array(data, verify=self.verify_reads)
        except entry_format.CorruptEntry as error:
            log.warning("evicting corrupt cache entry %s: %s", key, error)
            self._evict(key)
            return None
        self.counters.hits += 1
        return array

    def put_array(self, key: str, pixels: np.ndarray) -> bool:
        return self._set(key, entry_format.pack_array(pixels))

    def get_bytes(self, key: str, kind: int = entry_format.ENCODED) -> tuple[bytes, dict[str, Any]] | None:
        """An encoded frame's bytes with their header, or None on a miss."""
        data = self._get(key)
        if data is None:
            return None
        try:
            record = entry_format.unpack(data, verify=self.verify_reads)
            if record.kind != kind:
                raise entry_format.CorruptEntry("entry has another kind")
        except entry_format.CorruptEntry as error:
            log.warning("evicting corrupt cache entry %s: %s", key, error)
            self._evict(key)
            return None
        self.counters.hits += 1
        return bytes(record.payload), dict(record.header)

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
        """Entries and bytes on disk (shared) plus this process's counters."""
        cache = self._maintenance_handle()
        try:
            entries, volume = len(cache), cache.volume()
        except Exception as error:
            raise CacheError(
                f"frame cache at {self.directory} is damaged ({error}); run `ahi-torch cache repair`"
            ) from error
        state = self._process.get()
        return {
            "directory": str(self.directory),
            "mode": self.mode,
            "entries": entries,
            "volume_bytes": volume,
            "size_limit_bytes": self.size_limit,
            "storing": state.storing and state.broken is None,
            **asdict(self.counters),
            "hit_rate": self.counters.hit_rate,
        }

    def clear(self) -> int:
        """Remove every entry (through diskcache: only files of its own); returns how many."""
        return int(self._maintenance_handle().clear(retry=True))

    def check(self, fix: bool = True) -> list[str]:
        """Repair diskcache's bookkeeping (orphan files after a crash); returns its warnings."""
        return [str(w.message) for w in self._maintenance_handle().check(fix=fix, retry=True)]

    def keys(self) -> list[str]:
        return [str(k) for k in self._maintenance_handle().iterkeys()]
