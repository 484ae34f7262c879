"""Epoch statistics gathered across DataLoader workers: frames served, replaced, retried, cache hits.

Every process counts into its one :data:`~ahi_torch.counters.COUNTERS`; a dataset adds what grew
during each of its own batches to its :class:`EpochStats`, so a train and a val dataset in one
process keep apart. :class:`EpochStats` gives every process a row of one shared-memory tensor
(``torch``'s shared memory travels into workers under fork and spawn alike); only that process
writes its row, so no lock is needed. The training loop reads the sum:

>>> dataset.stats.reset()                 # at the start of an epoch
>>> for batch in loader: ...
>>> print(dataset.stats.summary())
{'frames_served': 288, 'replaced': 0, 'retried': 0, 'failed': 0, 'cache_hit_rate': 1.0, ...}
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import get_worker_info

from ..counters import Counters

#: The counters a batch counts while it runs, in row order (the cache's writes happen later, in
#: its writer thread, and would land in whichever batch was running: they are not here).
FIELDS = (
    "items_served",
    "frames_served",
    "replaced",
    "retried",
    "failed",
    "cache_hits",
    "cache_misses",
    "cache_unavailable",
    "requests",
    "bytes_fetched",
)
#: Rows: the main process, then one per worker id (DataLoader ids beyond this share the last row).
ROWS = 65


class EpochStats:
    """Counters summed over the main process and every worker; see the module docstring."""

    def __init__(self) -> None:
        self.counts = torch.zeros((ROWS, len(FIELDS)), dtype=torch.int64).share_memory_()
        self.baseline = torch.zeros(len(FIELDS), dtype=torch.int64)

    def record(self, counted: Counters) -> None:
        """Add what one batch counted to this process's row."""
        info = get_worker_info()
        row = 0 if info is None else min(info.id + 1, ROWS - 1)
        self.counts[row] += torch.tensor([getattr(counted, name) for name in FIELDS], dtype=torch.int64)

    def reset(self) -> None:
        """Start counting from now (call it in the main process at the start of an epoch)."""
        self.baseline = self.counts.sum(dim=0).clone()

    def summary(self) -> dict[str, Any]:
        """Counts since the last :meth:`reset`, over every process, plus the cache hit rate."""
        counts = (self.counts.sum(dim=0) - self.baseline).tolist()
        result: dict[str, Any] = dict(zip(FIELDS, (int(c) for c in counts), strict=True))
        result["cache_hit_rate"] = Counters(**result).cache_hit_rate
        return result

    def line(self) -> str:
        """One line for a training log."""
        s = self.summary()
        return (
            f"{s['frames_served']} frames in {s['items_served']} items, {s['replaced']} replaced, "
            f"{s['retried']} retried, {s['failed']} failed, cache hit rate {s['cache_hit_rate']:.0%}, "
            f"{s['requests']} requests, {s['bytes_fetched'] / 1e6:.1f} MB fetched"
        )
