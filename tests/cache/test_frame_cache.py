"""The frame cache: hits, version separation, concurrent writers, corruption, no pickles, 0700."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import sqlite3
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest

from ahi_torch.cache import FrameCache, frame_key
from ahi_torch.counters import counting
from ahi_torch.errors import ConfigError
from ahi_torch.fetch import FrameFetcher
from ahi_torch.local import LocalAHI

from ..conftest import ImportedData

RNG = np.random.default_rng(3)


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 3000, (64, 64)).astype(np.int16)


def test_round_trip_and_counters(tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "c")
    key = frame_key("decoded", "d" * 32, "i" * 32, 1, "f" * 32)
    frame = _frame(1)
    with counting() as counted:
        assert cache._get_array(key) is None
        assert cache._put_array(key, frame)
        hit = cache._get_array(key)
        cache.flush()
    assert hit is not None and hit.dtype == np.int16 and hit.flags.writeable
    np.testing.assert_array_equal(hit, frame)
    assert (counted.cache_hits, counted.cache_misses, counted.cache_writes) == (1, 1, 1)
    with counting() as read_back:
        from_disk = FrameCache(tmp_path / "c")._get_array(key)
    assert read_back.cache_bytes_read == counted.cache_bytes_written > frame.nbytes, "the whole entry, read once"
    assert from_disk is not None and from_disk.flags.writeable
    np.testing.assert_array_equal(from_disk, frame)
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700


def test_versions_are_separate_entries(tmp_path: Path) -> None:
    cache = FrameCache(tmp_path)
    v1 = frame_key("decoded", "d", "i", 1, "f")
    v2 = frame_key("decoded", "d", "i", 2, "f")
    cache._put_array(v1, _frame(1))
    assert cache._get_array(v2) is None, "a new image set version must not see the old version's pixels"
    cache._put_array(v2, _frame(2))
    np.testing.assert_array_equal(cache._get_array(v1), _frame(1))
    np.testing.assert_array_equal(cache._get_array(v2), _frame(2))


def test_encoded_entries_keep_their_content_type(tmp_path: Path) -> None:
    from ahi_torch.cache import FrameKey

    cache = FrameCache(tmp_path, mode="encoded")
    key = FrameKey("d", "i", 1, "f")
    cache.put_frame(key, np.zeros((1, 1), np.uint8), b"\xff\x4f\xff\x51payload", "image/jphc")
    payload, header = cache._get_bytes(key.text("encoded"))  # type: ignore[misc]
    assert payload == b"\xff\x4f\xff\x51payload" and header == {"content_type": "image/jphc"}


def _writer(directory: str, seed: int, keys: int) -> None:
    cache = FrameCache(directory)
    for k in range(keys):
        cache._put_array(f"decoded/k{k}", _frame(k))
        got = cache._get_array(f"decoded/k{(k * 7 + seed) % keys}")
        if got is not None:
            np.testing.assert_array_equal(got, _frame((k * 7 + seed) % keys))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_two_processes_write_the_same_keys(tmp_path: Path, context: str) -> None:
    ctx = mp.get_context(context)
    processes = [ctx.Process(target=_writer, args=(str(tmp_path), seed, 40)) for seed in (1, 2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    cache = FrameCache(tmp_path)
    for k in range(40):
        np.testing.assert_array_equal(cache._get_array(f"decoded/k{k}"), _frame(k))
    assert len(cache.diskcache) == 40


def test_corrupt_entry_is_evicted_and_missed(tmp_path: Path) -> None:
    cache = FrameCache(tmp_path)
    keys = ["decoded/before", "decoded/corrupt-me", "decoded/after"]
    big = np.random.default_rng(5).integers(-1000, 3000, (256, 256)).astype(np.int16)
    for n, key in enumerate(keys):
        cache._put_array(key, big + n)
    cache.close()
    packs = list((tmp_path / "packs").glob("*.pack"))
    assert len(packs) == 1, "one process writes one pack"
    data = bytearray(packs[0].read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the middle entry's pixels
    packs[0].write_bytes(bytes(data))
    cache = FrameCache(tmp_path)
    with counting() as counted:
        assert cache._get_array(keys[1]) is None
    assert counted.cache_corrupt_evicted == 1 and counted.cache_misses == 1
    assert keys[1] not in cache.diskcache
    for n in (0, 2):
        np.testing.assert_array_equal(cache._get_array(keys[n]), big + n)


def test_an_index_row_pointing_at_another_entry_is_refused(tmp_path: Path) -> None:
    """Never misread: an entry names its own key, so a location that points elsewhere is a miss."""
    cache = FrameCache(tmp_path)
    cache._put_array("decoded/a", _frame(1))
    cache._put_array("decoded/b", _frame(2))
    cache.flush()
    cache.diskcache.set("decoded/b", cache.diskcache.get("decoded/a"))
    with counting() as counted:
        assert cache._get_array("decoded/b") is None
    assert counted.cache_corrupt_evicted == 1
    np.testing.assert_array_equal(cache._get_array("decoded/a"), _frame(1))


def test_pickled_rows_are_refused(tmp_path: Path) -> None:
    """A row planted by someone else that asks to be unpickled is never unpickled."""
    cache = FrameCache(tmp_path)
    cache._put_array("decoded/real", _frame(1))
    cache.close()

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (tmp_path / "pwned",))

    db = sqlite3.connect(tmp_path / "index" / "cache.db")
    db.execute(
        "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, size, mode,"
        " filename, value) VALUES (?, 1, 0, NULL, 0, 0, NULL, 0, 4, NULL, ?)",
        ("decoded/evil", pickle.dumps(Boom())),
    )
    db.commit()
    db.close()
    reopened = FrameCache(tmp_path)
    assert reopened._get_array("decoded/evil") is None
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(TypeError):
        reopened.diskcache.set("decoded/x", {"not": "bytes"})


def test_pickles_without_its_connection(tmp_path: Path) -> None:
    cache = FrameCache(tmp_path)
    cache._put_array("decoded/a", _frame(1))
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._cache is None
    np.testing.assert_array_equal(clone._get_array("decoded/a"), _frame(1))


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cache mode"):
        FrameCache(tmp_path, mode="compressed")
    with pytest.raises(ConfigError, match="size_limit_gb"):
        FrameCache(tmp_path, size_limit_gb=0)


def test_a_cache_smaller_than_the_dataset_says_so_with_the_ways_out(
    ahi: LocalAHI, synthetic_import: ImportedData, tmp_path: Path
) -> None:
    """Issue 23.5: a node whose frames exceed the cache's limit refetches every epoch; say so once, at build."""
    from ahi_torch.datasets import FrameDataset
    from ahi_torch.datasets._base import decoded_bytes
    from ahi_torch.errors import CacheTooSmallWarning
    from ahi_torch.index import build_index

    index = build_index(ahi.client(), synthetic_import.datastore_id, progress=False)
    needed = decoded_bytes(index)
    assert needed == sum(
        r * c * max(s, 1) * max(-(-b // 8), 1)
        for r, c, s, b in zip(
            *(index.table.column(n).to_pylist() for n in ("rows", "columns", "samples_per_pixel", "bits_allocated")),
            strict=True,
        )
    )
    half = FrameCache(tmp_path / "half", size_limit_gb=needed / 2 / 2**30)
    with pytest.warns(CacheTooSmallWarning, match=r"about 50% of them cached .*cache mode 'encoded'"):
        FrameDataset(index, FrameFetcher(ahi.client(), cache=half))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheTooSmallWarning)
        FrameDataset(
            index, FrameFetcher(ahi.client(), cache=FrameCache(tmp_path / "whole", size_limit_gb=needed / 2**30))
        )
        # The same half-size limit holds the data set in encoded mode (about 2.3x smaller): no warning.
        FrameDataset(
            index,
            FrameFetcher(
                ahi.client(), cache=FrameCache(tmp_path / "enc", size_limit_gb=needed / 2 / 2**30, mode="encoded")
            ),
        )
    tight = FrameCache(tmp_path / "tight", size_limit_gb=needed / 5 / 2**30, mode="encoded")
    with pytest.warns(CacheTooSmallWarning, match="holds .* GiB encoded") as caught:
        FrameDataset(index, FrameFetcher(ahi.client(), cache=tight))
    assert "cache mode 'encoded'" not in str(caught[0].message), "already encoded: only a larger limit helps"
