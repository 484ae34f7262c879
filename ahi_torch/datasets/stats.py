"""Epoch statistics gathered across DataLoader workers: frames served, replaced, retried, cache hits.

Each worker keeps its own counters (fetcher, cache, error policy). :class:`EpochStats` gives every
process a row of one shared-memory tensor (``torch``'s shared memory travels into workers under
fork and spawn alike); a process adds what its counters grew by since it last wrote, and only it
writes its row, so no lock is needed. The training loop reads the sum:

>>> dataset.stats.reset()                 # at the start of an epoch
>>> for batch in loader: ...
>>> print(dataset.stats.summary())
{'frames_served': 288, 'replaced': 0, 'retried': 0, 'failed': 0, 'cache_hit_rate': 1.0, ...}
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import get_worker_info

#: The counters, in row order.
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
        self.table = torch.zeros((ROWS, len(FIELDS)), dtype=torch.int64).share_memory_()
        self.baseline = torch.zeros(len(FIELDS), dtype=torch.int64)
        self._pid = os.getpid()
        self._inherited = torch.zeros(len(FIELDS), dtype=torch.int64)
        self._written: dict[int, torch.Tensor] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"table": self.table, "baseline": self.baseline}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.table, self.baseline = state["table"], state["baseline"]
        self._pid = os.getpid()
        self._inherited = torch.zeros(len(FIELDS), dtype=torch.int64)  # spawned: counters start at zero
        self._written = {}

    def record(self, totals: dict[str, int]) -> None:
        """Publish this process's running totals (only what grew since the last call is added)."""
        if self._pid != os.getpid():
            # A forked worker starts with copies of the parent's counters, which the parent
            # already published: count only what this process adds to them.
            self._inherited = self._written.get(0, self._inherited)
            self._written = {}
            self._pid = os.getpid()
        info = get_worker_info()
        row = 0 if info is None else min(info.id + 1, ROWS - 1)
        now = torch.tensor([int(totals.get(name, 0)) for name in FIELDS], dtype=torch.int64)
        before = self._written.get(row, self._inherited)
        self.table[row] += now - before
        self._written[row] = now

    def reset(self) -> None:
        """Start counting from now (call it in the main process at the start of an epoch)."""
        self.baseline = self.table.sum(dim=0).clone()

    def summary(self) -> dict[str, Any]:
        """Counts since the last :meth:`reset`, over every process, plus the cache hit rate."""
        counts = (self.table.sum(dim=0) - self.baseline).tolist()
        result: dict[str, Any] = dict(zip(FIELDS, (int(c) for c in counts), strict=True))
        looked_up = result["cache_hits"] + result["cache_misses"]
        result["cache_hit_rate"] = result["cache_hits"] / looked_up if looked_up else 0.0
        return result

    def line(self) -> str:
        """One line for a training log."""
        s = self.summary()
        return (
            f"{s['frames_served']} frames in {s['items_served']} items, {s['replaced']} replaced, "
            f"{s['retried']} retried, {s['failed']} failed, cache hit rate {s['cache_hit_rate']:.0%}, "
            f"{s['requests']} requests, {s['bytes_fetched'] / 1e6:.1f} MB fetched"
        )
