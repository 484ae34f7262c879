"""ahi_torch.counters: one count per process, read as differences."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from ahi_torch.counters import COUNTERS, FIELDS, Counters, counting
from ahi_torch.datasets import stats


def test_counters_start_at_zero_and_hit_rate_is_hits_over_lookups() -> None:
    counters = Counters()
    assert all(value == 0 for value in vars(counters).values()) and counters.cache_hit_rate == 0.0
    counters.cache_hits, counters.cache_misses = 3, 1
    assert counters.cache_hit_rate == 0.75
    assert counters.minus(Counters(cache_hits=1, requests=2)) == Counters(cache_hits=2, cache_misses=1, requests=-2)
    copy = counters.copy()
    copy.cache_hits += 1
    assert counters.cache_hits == 3, "a copy is a snapshot, not a view"


def test_counting_sees_only_its_block_and_nests() -> None:
    COUNTERS.requests += 5  # before the block: not its own
    with counting() as outer:
        COUNTERS.requests += 2
        with counting() as inner:
            COUNTERS.cache_hits += 1
        COUNTERS.failed += 1
    assert (outer.requests, outer.cache_hits, outer.failed) == (2, 1, 1)
    assert (inner.requests, inner.cache_hits, inner.failed) == (0, 1, 0)


def test_counting_is_filled_in_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), counting() as counted:
        COUNTERS.frames_failed += 1
        raise RuntimeError("a failed batch")
    assert counted.frames_failed == 1


def test_every_name_is_one_counter() -> None:
    assert tuple(f.name for f in dataclasses.fields(Counters)) == FIELDS and len(set(FIELDS)) == len(FIELDS)
    assert set(stats.FIELDS) <= set(FIELDS), "dataset.stats reports counters the process counts"


def test_epoch_stats_add_batches_and_count_from_reset() -> None:
    epoch = stats.EpochStats()
    epoch.record(Counters(items_served=4, frames_served=8, cache_hits=6, cache_misses=2, cache_writes=2))
    assert epoch.summary()["items_served"] == 4 and epoch.summary()["cache_hit_rate"] == 0.75
    assert "cache_writes" not in epoch.summary(), "the writer thread's counts belong to no batch"
    epoch.reset()
    epoch.record(Counters(items_served=1, requests=1, cache_misses=1, bytes_fetched=2_500_000))
    summary = epoch.summary()
    assert (summary["items_served"], summary["requests"], summary["cache_hit_rate"]) == (1, 1, 0.0)
    assert epoch.line() == (
        "0 frames in 1 items, 0 replaced, 0 retried, 0 failed, cache hit rate 0%, 1 requests, 2.5 MB fetched"
    )


def test_two_threads_counting_at_once_warn_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Differences cannot keep two threads apart: the first overlap says so, once; nesting in one thread does not."""
    import threading

    from ahi_torch import counters

    monkeypatch.setattr(counters, "_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with counting(), counting():  # nested in one thread: fine
            pass
    inside, release = threading.Event(), threading.Event()

    def other_thread() -> None:
        with counting():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other_thread)
    thread.start()
    inside.wait(10)
    try:
        with pytest.warns(counters.OverlappingCountsWarning, match="two threads"), counting():
            pass
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with counting():  # said once per process
                pass
    finally:
        release.set()
        thread.join(10)
    assert not counters._open_blocks, "every block closed"
