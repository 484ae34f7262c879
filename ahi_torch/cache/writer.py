"""EntryWriter: one thread per process that appends cache entries to packs and indexes them in batches.

Storing a frame costs its fetch thread a queue put: the pack append and the index transaction
happen here, a batch at a time (one SQLite transaction for up to :data:`BATCH` entries instead of
one per frame, and no thread of this process waits on another for SQLite's write lock). The
queue is bounded, so a disk slower than the network slows fetching down instead of filling
memory. Entries waiting here are served from memory to readers in this process.

A process that exits normally (a DataLoader worker at the end of an epoch included) writes what
is queued first: :meth:`EntryWriter.flush` runs among multiprocessing's exit finalizers. A fork
(DataLoader workers, ``multiprocessing``) waits for the batch being written to finish, so no child
starts with a copy of SQLite or of a pack in the middle of a write.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Callable
from multiprocessing.util import Finalize

from .entry_format import Parts
from .packs import Location, PackWriter

#: Entries indexed in one transaction at most; and entries queued before ``put`` waits.
BATCH = 64
QUEUE_ENTRIES = 128

#: ``commit([(key, location, bytes), ...])`` indexes a batch that reached its pack.
Commit = Callable[[list[tuple[str, Location, int]]], None]


class EntryWriter:
    """Writes queued entries on a thread of its own; ``on_error`` hears of the first failure."""

    def __init__(
        self,
        packs: PackWriter,
        commit: Commit,
        on_error: Callable[[BaseException], None],
        on_stop: Callable[[], None],
    ) -> None:
        self.packs = packs
        self._commit = commit
        self._on_error = on_error
        self._on_stop = on_stop
        self._queue: queue.Queue[tuple[str, Parts] | None] = queue.Queue(maxsize=QUEUE_ENTRIES)
        self._pending: dict[str, Parts] = {}
        self.failed = False
        self._busy = threading.Lock()  # held while a batch is written; a fork waits for it
        _WRITERS.add(self)
        self._thread = threading.Thread(target=self._run, name="ahi-cache-writer", daemon=True)
        self._thread.start()
        Finalize(self, self.flush, exitpriority=10)

    def put(self, key: str, parts: Parts) -> None:
        """Queue an entry; its buffers must stay unchanged until written (a change fails the CRC on read)."""
        self._pending[key] = parts
        self._queue.put((key, parts))

    def pending(self, key: str) -> Parts | None:
        """The entry under ``key`` if it is queued and not yet written."""
        return self._pending.get(key)

    def flush(self) -> None:
        """Wait until every queued entry is written and indexed (or dropped after a failure)."""
        if self._thread.is_alive():
            self._queue.join()

    def stop(self) -> None:
        """Write what is queued, then end the thread (``on_stop`` runs on it first) and close the pack."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.packs.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._on_stop()  # e.g. close the index connection this thread opened
                self._queue.task_done()
                return
            batch = [first]
            while len(batch) < BATCH:
                try:
                    queued = self._queue.get_nowait()
                except queue.Empty:
                    break
                if queued is None:
                    self._queue.put(None)  # handled once this batch is written (the queue has room now)
                    self._queue.task_done()
                    break
                batch.append(queued)
            try:
                with self._busy:
                    if not self.failed:
                        self._commit([(key, self.packs.append(parts), parts.size) for key, parts in batch])
            except Exception as error:  # ENOSPC, EFBIG, a locked or damaged index...
                self.failed = True
                self._on_error(error)
            finally:
                for key, parts in batch:
                    if self._pending.get(key) is parts:
                        del self._pending[key]
                    self._queue.task_done()


#: Every live writer of this process, so a fork can wait for their batches.
_WRITERS: weakref.WeakSet[EntryWriter] = weakref.WeakSet()


def _before_fork() -> None:
    for writer in list(_WRITERS):
        writer._busy.acquire()


def _after_fork() -> None:
    for writer in list(_WRITERS):
        if writer._busy.locked():
            writer._busy.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)
