"""One process's counts of what ahi_torch did: calls, frame requests, cache lookups, items served.

Every part of the frame path counts into this process's one :data:`COUNTERS`, each event once and
in the one place it happens (a cache hit by the cache, a request by the fetcher, a replaced sample
by the dataset). Readers take differences, so a train and a val dataset in one process, or a
forked worker that starts with its parent's numbers, still see only their own share:

>>> with counting() as counted:
...     fetcher.get_many(refs)
>>> counted.requests, counted.cache_hits
(12, 4)

``dataset.stats`` adds up what grew during each of the dataset's batches, over every DataLoader
worker (see :mod:`ahi_torch.datasets.stats`). Differences cannot tell apart two threads of one
process counting at once (two datasets read from two threads): their blocks include each other's
counts, and the first such overlap warns (:class:`OverlappingCountsWarning`).
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Counters:
    """Counts of events, grouped by the part that counts them."""

    # AHIClient: operations through boto3
    calls: int = 0
    call_retries: int = 0  # botocore's own retries (ResponseMetadata.RetryAttempts)
    stream_retries: int = 0  # metadata bodies read again after the stream broke
    truncated_bodies: int = 0
    # FrameFetcher: GetImageFrame requests and what became of them
    requests: int = 0
    bytes_fetched: int = 0
    frame_retries: int = 0
    throttled: int = 0
    server_errors: int = 0
    transfer_errors: int = 0
    checksum_retries: int = 0
    checksum_failures: int = 0  # frames whose every attempt mismatched AHI's CRC32
    decode_errors: int = 0
    frames_failed: int = 0  # frames given up on after their attempts
    # FrameCache
    cache_hits: int = 0
    cache_misses: int = 0
    cache_unavailable: int = 0  # lookups and writes skipped because the cache could not be opened
    cache_writes: int = 0
    cache_bytes_read: int = 0
    cache_bytes_written: int = 0
    cache_write_failures: int = 0
    cache_corrupt_evicted: int = 0
    cache_packs_evicted: int = 0
    # Datasets: items and what the error policy did
    items_served: int = 0
    frames_served: int = 0
    replaced: int = 0
    retried: int = 0
    failed: int = 0

    @property
    def cache_hit_rate(self) -> float:
        """Hits over lookups (0.0 before the first lookup)."""
        looked_up = self.cache_hits + self.cache_misses
        return self.cache_hits / looked_up if looked_up else 0.0

    def copy(self) -> Counters:
        return dataclasses.replace(self)

    def minus(self, before: Counters) -> Counters:
        """What grew since ``before`` (a :meth:`copy` taken earlier)."""
        then = before.__dict__
        return Counters(**{name: now - then[name] for name, now in self.__dict__.items()})


#: The counters' names, in field order.
FIELDS = tuple(field.name for field in dataclasses.fields(Counters))

#: This process's counters. A forked child starts with a copy of its parent's, a spawned one at
#: zero; nothing reads them except as a difference, so neither is counted twice.
COUNTERS = Counters()


class OverlappingCountsWarning(UserWarning):
    """Two threads of one process counted at once: each block's counts include the other's."""


_open_blocks: Counter[int] = Counter()  # thread id -> counting() blocks open in it
_open_lock = threading.Lock()
_warned = False


@contextmanager
def counting() -> Iterator[Counters]:
    """What this process counted inside the block, filled in when the block ends (also when it raises)."""
    global _warned
    me = threading.get_ident()
    with _open_lock:
        overlap = any(thread != me for thread in _open_blocks)
        _open_blocks[me] += 1
        warn, _warned = overlap and not _warned, _warned or overlap
    if warn:
        warnings.warn(
            "two threads of this process are counting at once (datasets read from two threads?): their counts, "
            "dataset.stats included, hold each other's; read each dataset from one thread or in DataLoader workers",
            OverlappingCountsWarning,
            stacklevel=3,
        )
    before = COUNTERS.copy()
    counted = Counters()
    try:
        yield counted
    finally:
        counted.__dict__.update(COUNTERS.minus(before).__dict__)
        with _open_lock:
            _open_blocks[me] -= 1
            if not _open_blocks[me]:
                del _open_blocks[me]
