"""The processes that examine an import's files, and how a file reaches one: through shared memory.

Through the pool's pipe a 512 KB file was pickled, written 64 KB at a time and read back, each
chunk a wake-up of the other side; with the service and two workers on two cores that cost
1-2 ms of CPU per file, about a tenth of examining it. Here the importer copies the file into a
*slot*, a file in ``/dev/shm`` that it and every worker map, and sends the worker only the
slot's name and length. A file too large for a slot (or a ``/dev/shm`` too small to grow one)
goes through the pipe as before.

>>> with ExaminerPool(processes=2) as pool:
...     stored = pool.examine(dicom_bytes, "HTJ2K", frames_dir)
"""

from __future__ import annotations

import mmap
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from .examine import Stored, examine_into

#: Where slots live: memory-backed where the system has it (a slot on disk works, with writeback).
SHARED_MEMORY = Path("/dev/shm")
_PREFIX = "ahi-import-inputs-"


@dataclass(frozen=True)
class SlotRef:
    """What a worker is sent instead of a file: which slot holds it, and how many bytes."""

    path: str
    length: int


class _Slot:
    """One file-sized buffer, mapped by the importer; only the thread that took it from the free list writes it."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.mapping = self._map(size)

    def _map(self, size: int) -> mmap.mmap:
        with self.path.open("a+b") as handle:
            # Reserve the memory now: writing a mapped page a full tmpfs cannot back kills with SIGBUS.
            os.posix_fallocate(handle.fileno(), 0, size)
            return mmap.mmap(handle.fileno(), size)

    def fill(self, data: bytes, limit: int) -> SlotRef | None:
        """Copy ``data`` in (growing the slot up to ``limit``); None where it does not fit."""
        if len(data) > len(self.mapping):
            if len(data) > limit:
                return None
            try:
                grown = self._map(len(data))
            except OSError:  # ENOSPC: /dev/shm is smaller than this file
                return None
            self.mapping.close()
            self.mapping = grown
        self.mapping[: len(data)] = data
        return SlotRef(str(self.path), len(data))


class InputSlots:
    """A free list of slots in a folder of their own, removed on :meth:`close`."""

    def __init__(self, count: int, size: int, root: Path | None = None) -> None:
        root = root if root is not None else (SHARED_MEMORY if os.access(SHARED_MEMORY, os.W_OK) else None)
        _sweep_stale(Path(root or tempfile.gettempdir()))
        self.folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=root))
        self._free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        for number in range(count):
            self._free.put(_Slot(self.folder / str(number), size))
        self._count = count

    @contextmanager
    def holding(self, data: bytes, limit: int) -> Iterator[SlotRef | None]:
        """A slot that holds ``data`` until the block ends (None where it does not fit); waits for a free one."""
        slot = self._free.get()
        try:
            yield slot.fill(data, limit)
        finally:
            self._free.put(slot)

    def close(self) -> None:
        """Unmap every slot (waiting for those in use) and remove the folder; again, it does nothing."""
        for _ in range(self._count):
            self._free.get().mapping.close()
        self._count = 0
        shutil.rmtree(self.folder, ignore_errors=True)  # a cleaner may have emptied /dev/shm already


def _sweep_stale(root: Path) -> None:
    """Remove slot folders of services that died without closing them (SIGKILL): their pid is gone."""
    for folder in root.glob(f"{_PREFIX}*-*"):
        pid = folder.name[len(_PREFIX) :].partition("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, another user's: not ours to remove
            continue


class ExaminerPool:
    """A pool of ``processes`` (default: every core) that runs :func:`.examine.examine_into` on input files.

    Args:
        processes: worker processes.
        slot_bytes: each slot's first size; it grows to the largest file it has held.
        slot_limit: files larger than this go through the pool's pipe instead of a slot.
        slot_root: the folder for the slots' folder (default ``/dev/shm`` where writable).

    Workers come from a fork server: the service runs uvicorn and import threads, and forking a
    threaded process can copy a lock some thread holds.
    """

    def __init__(
        self,
        processes: int | None = None,
        *,
        slot_bytes: int = 1 << 20,
        slot_limit: int = 64 << 20,
        slot_root: Path | None = None,
    ) -> None:
        self.processes = processes or os.cpu_count() or 1
        context = get_context("forkserver")
        # The fork server imports pydicom, the codecs and this module once; each worker forks from it
        # ready to examine, instead of importing them all again (about a second of CPU each).
        context.set_forkserver_preload([__name__])
        self.executor = ProcessPoolExecutor(
            max_workers=self.processes, mp_context=context, initializer=_worker_start, initargs=(os.getpid(),)
        )
        # One slot per file in flight: the importer keeps twice the pool's size in flight.
        self.slots = InputSlots(2 * self.processes, slot_bytes, slot_root)
        self.slot_limit = slot_limit
        #: Files handed over in shared memory and through the pipe, since start.
        self.through_slots = 0
        self.through_pipe = 0
        self._count_lock = threading.Lock()

    def examine(self, data: bytes, storage_format: str, frames_dir: Path) -> Stored:
        """Examine one file in a worker, which writes its frames under ``frames_dir``; waits for the result."""
        with self.slots.holding(data, self.slot_limit) as slot:
            if slot is not None:
                stored = self.executor.submit(examine_slot, slot, storage_format, frames_dir).result()
        if slot is None:
            stored = self.executor.submit(examine_into, data, storage_format, frames_dir).result()
        with self._count_lock:
            if slot is None:
                self.through_pipe += 1
            else:
                self.through_slots += 1
        return stored

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.slots.close()

    def __enter__(self) -> ExaminerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- in the workers ---------------------------------------------------------------------------

#: Each slot as this worker maps it (remapped when the importer has grown it past the mapping).
_MAPPED: dict[str, mmap.mmap] = {}


def read_slot(slot: SlotRef) -> bytes:
    """The file a slot holds (a copy: the slot is reused once the result is back)."""
    mapping = _MAPPED.get(slot.path)
    if mapping is None or len(mapping) < slot.length:
        if mapping is not None:
            mapping.close()
        with Path(slot.path).open("rb") as handle:
            mapping = _MAPPED[slot.path] = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
    return mapping[: slot.length]


def examine_slot(slot: SlotRef, storage_format: str, frames_dir: Path) -> Stored:
    """:func:`.examine.examine_into` of the file a slot holds."""
    return examine_into(read_slot(slot), storage_format, frames_dir)


def _worker_start(owner: int) -> None:
    """Set up a pool worker: one codec thread, and an exit as soon as the service that owns it is gone.

    A worker holds both ends of its own call queue, so it never sees the owner's end close: a
    service stopped by SIGKILL (or one that never called ``stop``) would leave it, the fork
    server's other workers and the resource tracker running for good.
    """
    from . import transcode

    transcode.CODEC_SHARED_BY_THREADS = False  # no other thread runs the codec: one decode per level
    threading.Thread(target=_exit_with, args=(owner,), name="ahi-owner-watch", daemon=True).start()


def _exit_with(owner: int, interval: float = 1.0) -> None:
    while True:
        time.sleep(interval)
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:  # a pid reused by another user's process: the owner is gone
            os._exit(0)
