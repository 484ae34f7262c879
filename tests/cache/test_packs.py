"""The frame cache's packs: size limit, LRU eviction, bytes on disk, old layouts, any sequence of operations."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from diskcache import Cache
from hypothesis import given, settings
from hypothesis import strategies as st

from ahi_torch.cache import FrameCache, packs
from ahi_torch.cache.frame_cache import CacheUnavailableWarning
from ahi_torch.cache.packs import pack_files, pack_size
from ahi_torch.counters import counting

FRAME = 128 * 128 * 2  # bytes of one test frame


def _frame(seed: int, side: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 3000, (side, side)).astype(np.int16)


def _pack_bytes(directory: Path) -> int:
    return sum(size for _, size, _ in pack_files(directory / "packs"))


def test_the_size_limit_holds_and_whole_packs_go_oldest_first(tmp_path: Path) -> None:
    limit = 40 * FRAME
    cache = FrameCache(tmp_path, size_limit_gb=limit / 2**30)
    assert cache.pack_bytes == pack_size(limit) == 64 * 2**10, "the smallest pack: two frames"
    with counting() as counted:
        for k in range(200):
            cache._put_array(f"decoded/k{k}", _frame(k))
            if k % 10 == 9:
                cache.flush()
                assert _pack_bytes(tmp_path) <= limit + 2 * cache.pack_bytes, f"over the limit after {k + 1} frames"
        cache.close()
    assert counted.cache_packs_evicted > 0
    held = [k for k in range(200) if cache._get_array(f"decoded/k{k}") is not None]
    assert 30 <= len(held) <= 42, f"{len(held)} frames held in a cache of 40"
    assert held == list(range(200 - len(held), 200)), "the oldest packs went first, whole"
    for k in held[::7]:
        np.testing.assert_array_equal(cache._get_array(f"decoded/k{k}"), _frame(k))
    assert len(cache.keys()) == len(held), "the index forgot the evicted packs' entries"


def test_a_pack_read_recently_outlives_packs_written_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Least recently *used*: reading a pack marks it, so it is evicted after packs that were only written."""
    monkeypatch.setattr(packs, "TOUCH_SECONDS", 0.0)
    limit = 40 * FRAME
    cache = FrameCache(tmp_path, size_limit_gb=limit / 2**30)
    for k in range(30):
        cache._put_array(f"decoded/k{k}", _frame(k))
    cache.flush()
    oldest = pack_files(tmp_path / "packs")[0][2]
    assert cache._get_array("decoded/k0") is not None  # the reader opens the pack (and marks it used)
    os.utime(tmp_path / "packs" / f"{oldest}.pack", (1, 1))  # as if that was long ago...
    assert cache._get_array("decoded/k0") is not None  # ...and read again just now, from the open pack
    assert pack_files(tmp_path / "packs")[-1][2] == oldest, "a read marks an open pack as used again"
    for k in range(30, 60):
        cache._put_array(f"decoded/k{k}", _frame(k))
    cache.close()
    assert cache._get_array("decoded/k0") is not None and cache._get_array("decoded/k1") is not None
    assert cache._get_array("decoded/k2") is None, "the pack after it was used less recently"


def test_bytes_on_disk_are_the_payload_plus_five_percent_at_most(tmp_path: Path) -> None:
    cache = FrameCache(tmp_path)
    payload = 0
    for k in range(64):
        frame = _frame(k, side=512)
        payload += frame.nbytes
        cache._put_array(f"decoded/k{k}", frame)
    stats = cache.stats()
    assert stats["entries"] == 64
    assert payload <= stats["pack_bytes"] <= 1.001 * payload
    assert stats["volume_bytes"] <= 1.05 * payload, stats


def test_an_old_one_file_per_frame_cache_is_emptied_once_with_one_line(tmp_path: Path) -> None:
    old = Cache(str(tmp_path), size_limit=2**30)
    old.set("decoded/old", b"x" * 100_000)  # a value file of its own, as the old layout stored frames
    old.close()
    value_files = list(tmp_path.rglob("*.val"))
    assert len(value_files) == 1
    (tmp_path / "notes.txt").write_text("a user's file")
    with pytest.warns(CacheUnavailableWarning, match="one-file-per-frame layout .* 1 entries were removed"):
        cache = FrameCache(tmp_path)
        assert cache._get_array("decoded/old") is None
    assert not value_files[0].exists() and not (tmp_path / "cache.db").exists()
    assert not [path for path in tmp_path.iterdir() if len(path.name) == 2], "its emptied folders are gone too"
    assert (tmp_path / "notes.txt").read_text() == "a user's file", "only the old cache's own files go"
    cache._put_array("decoded/new", _frame(1))
    cache.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheUnavailableWarning)
        np.testing.assert_array_equal(FrameCache(tmp_path)._get_array("decoded/new"), _frame(1))


def test_an_entry_queued_but_not_written_is_served_from_memory(tmp_path: Path) -> None:
    cache = FrameCache(tmp_path)
    frames = {k: _frame(k) for k in range(50)}
    for k, frame in frames.items():
        cache._put_array(f"decoded/k{k}", frame)
        got = cache._get_array(f"decoded/k{k}")
        assert got is not None and got is not frame
        np.testing.assert_array_equal(got, frame)
        got[0, 0] = 12345  # a reader's copy: the queued entry is unchanged
    cache.close()
    for k, frame in frames.items():
        np.testing.assert_array_equal(cache._get_array(f"decoded/k{k}"), frame)


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 5), st.integers(0, 1000)),
        st.tuples(st.just("get"), st.integers(0, 5), st.just(0)),
        st.tuples(st.sampled_from(["flush", "close", "reopen"]), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(operations=OPERATIONS)
def test_any_sequence_of_operations_reads_the_last_frame_stored(
    operations: list, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("sequence")
    cache = FrameCache(directory)
    stored: dict[int, int] = {}
    for operation, key, seed in operations:
        if operation == "put":
            assert cache._put_array(f"decoded/k{key}", _frame(seed, side=16))
            stored[key] = seed
        elif operation == "get":
            got = cache._get_array(f"decoded/k{key}")
            if key in stored:
                np.testing.assert_array_equal(got, _frame(stored[key], side=16))
            else:
                assert got is None
        elif operation == "reopen":  # another handle sees what this one flushed
            cache.flush()
            cache = FrameCache(directory)
        else:
            getattr(cache, operation)()
    cache.close()
    assert sorted(FrameCache(directory).keys()) == sorted(f"decoded/k{key}" for key in stored)


def test_a_write_the_disk_takes_in_pieces_is_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``writev`` may write part of what it is given; the rest follows, and entries read back whole."""
    real = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, views: real(fd, [memoryview(views[0])[:1000]]))
    cache = FrameCache(tmp_path)
    for k in range(5):
        cache._put_array(f"decoded/k{k}", _frame(k))
    cache.close()
    monkeypatch.setattr(os, "writev", real)
    for k in range(5):
        np.testing.assert_array_equal(FrameCache(tmp_path)._get_array(f"decoded/k{k}"), _frame(k))
    assert packs._advance([b"abc", b"defg"], 5) == [memoryview(b"defg")[2:]]
    assert packs._advance([b"abc", b"defg"], 3) == [b"defg"]


def test_clear_removes_every_entry_and_pack_and_nothing_else(tmp_path: Path) -> None:
    cache = FrameCache(tmp_path)
    for k in range(6):
        cache._put_array(f"decoded/k{k}", _frame(k))
    (tmp_path / "notes.txt").write_text("a user's file")
    assert cache.clear() == 6
    assert not list((tmp_path / "packs").glob("*.pack")) and cache.stats()["entries"] == 0
    assert (tmp_path / "notes.txt").read_text() == "a user's file"


def test_repair_indexes_a_pack_up_to_its_first_damaged_entry(tmp_path: Path) -> None:
    from ahi_torch.cache.repair import repair_cache

    cache = FrameCache(tmp_path)
    for k in range(3):
        cache._put_array(f"decoded/k{k}", _frame(k))
    cache.close()
    pack = next((tmp_path / "packs").glob("*.pack"))
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the second entry's pixels
    pack.write_bytes(bytes(data))
    (tmp_path / "index" / "cache.db-wal").write_bytes(b"")  # a sidecar goes aside with its database
    report = repair_cache(FrameCache(tmp_path))
    assert (report.kept, report.dropped) == (1, 1)
    assert report.backup is not None and report.backup.with_name(report.backup.name + "-wal").exists()
    repaired = FrameCache(tmp_path)
    assert repaired.keys() == ["decoded/k0"]
    np.testing.assert_array_equal(repaired._get_array("decoded/k0"), _frame(0))
