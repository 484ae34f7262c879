"""A cache that cannot be used never takes training down: it warns once and serves frames uncached."""

from __future__ import annotations

import os
import stat
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from ahi_torch.cache import FrameCache
from ahi_torch.cache.frame_cache import LOCK_NAME, CacheUnavailableWarning
from ahi_torch.cli.main import main
from ahi_torch.counters import counting
from ahi_torch.datasets import FrameDataset
from ahi_torch.fetch import FrameFetcher
from ahi_torch.index import FrameIndex, build_index
from ahi_torch.local import LocalAHI

from ..conftest import ImportedData


@pytest.fixture(scope="module")
def index(ahi: LocalAHI, synthetic_import: ImportedData) -> FrameIndex:
    ct = build_index(ahi.client(), synthetic_import.datastore_id, progress=False)
    return ct.filter(ct.column("modality") == b"CT")


def _pixels(index: FrameIndex, ahi: LocalAHI) -> list[np.ndarray]:
    plain = FrameDataset(index, ahi.client(), rescale=False, dtype=None)
    return [plain[i]["image"].numpy() for i in range(6)]


def test_a_cache_directory_that_cannot_be_created(ahi: LocalAHI, index: FrameIndex, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a user's file")
    cache = FrameCache(blocker / "cache")
    dataset = FrameDataset(index, FrameFetcher(ahi.client(), cache=cache), rescale=False, dtype=None)
    expected = _pixels(index, ahi)
    with counting() as counted, pytest.warns(CacheUnavailableWarning, match="served uncached") as caught:
        served = [dataset[i]["image"].numpy() for i in range(6)]
    assert len(caught) == 1, "warned once, not once per frame"
    for got, want in zip(served, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert counted.cache_unavailable == 6 and not cache.available
    assert blocker.read_text() == "a user's file"


def _fill(directory: Path, entries: int = 600) -> None:
    cache = FrameCache(directory)
    for k in range(entries):
        assert cache._put_array(f"decoded/k{k}", np.full((64, 64), k, dtype=np.int16))
    cache.close()


def _damage(database: Path) -> None:
    """Overwrite a page in the middle of the database with garbage, as a bad sector would."""
    data = bytearray(database.read_bytes())
    page = 4096
    assert len(data) >= 6 * page, len(data)
    middle = (len(data) // page // 2) * page
    data[middle : middle + page] = os.urandom(page)
    database.write_bytes(bytes(data))


def test_a_damaged_database_degrades_and_repair_keeps_intact_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "cache"
    _fill(directory)
    _damage(directory / "index" / "cache.db")
    cache = FrameCache(directory)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [cache._get_array(f"decoded/k{k}") for k in range(600)]
    assert any(issubclass(w.category, CacheUnavailableWarning) for w in caught) or all(r is not None for r in results)
    for k, result in enumerate(results):
        assert result is None or int(result[0, 0]) == k, "a damaged cache never serves wrong pixels"

    assert main(["cache", "stats", "--dir", str(directory)]) in (0, 1)
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err and len(printed.err.strip().splitlines()) <= 1

    assert main(["cache", "repair", "--dir", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "intact entries" in out and "cache.db.damaged-" in out
    repaired = FrameCache(directory)
    kept = [k for k in range(600) if repaired._get_array(f"decoded/k{k}") is not None]
    assert len(kept) == 600, f"kept only {len(kept)} of 600 entries: the packs hold them all"
    for k in kept:
        np.testing.assert_array_equal(repaired._get_array(f"decoded/k{k}"), np.full((64, 64), k, dtype=np.int16))
    assert repaired._put_array("decoded/new", np.zeros((2, 2), dtype=np.int16)), "the rebuilt cache stores again"
    assert any(p.name.startswith("cache.db.damaged-") for p in (directory / "index").iterdir()), "damaged file kept"


def test_a_database_that_is_not_sqlite_at_all(
    ahi: LocalAHI, index: FrameIndex, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "cache"
    (directory / "index").mkdir(parents=True)
    (directory / "index" / "cache.db").write_bytes(b"this is not a database" * 300)
    dataset = FrameDataset(index, FrameFetcher(ahi.client(), cache=FrameCache(directory)), error_policy="skip")
    with pytest.warns(CacheUnavailableWarning):
        assert dataset[0]["meta"]["index"] == 0, "served uncached, not replaced by the skip policy"
    assert len(dataset.failures) == 0
    assert main(["cache", "stats", "--dir", str(directory)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cache repair" in err
    assert main(["cache", "repair", "--dir", str(directory)]) == 0
    assert FrameCache(directory).stats()["entries"] == 0


def test_check_keeps_its_own_lock(tmp_path: Path) -> None:
    _fill(tmp_path / "cache", entries=3)
    cache = FrameCache(tmp_path / "cache")
    cache.check(fix=True)
    assert (tmp_path / "cache" / LOCK_NAME).exists()
    assert cache._get_array("decoded/k2") is not None


def _privileged(command: list[str]) -> None:
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"{' '.join(command[:2])} is not permitted here: {done.stderr.strip()}")


@pytest.mark.parametrize("kind", ["read-only filesystem", "immutable directory"])
def test_an_unwritable_cache_serves_uncached_with_one_warning(
    ahi: LocalAHI, index: FrameIndex, tmp_path: Path, kind: str
) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    if kind == "read-only filesystem":
        _privileged(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(directory)])
        _fill(directory, entries=2)
        _privileged(["mount", "-o", "remount,ro", str(directory)])
        undo = ["umount", str(directory)]
    else:
        _fill(directory, entries=2)
        _privileged(["chattr", "-R", "+i", str(directory)])
        undo = ["chattr", "-R", "-i", str(directory)]
    try:
        cache = FrameCache(directory)
        dataset = FrameDataset(
            index, FrameFetcher(ahi.client(), cache=cache), rescale=False, dtype=None, error_policy="skip"
        )
        expected = _pixels(index, ahi)
        with counting() as counted, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            served = [dataset[i] for i in range(6)]
            cache.flush()
        assert [item["meta"]["index"] for item in served] == list(range(6)), "no sample was skipped"
        for item, want in zip(served, expected, strict=True):
            np.testing.assert_array_equal(item["image"].numpy(), want)
        cache_warnings = [w for w in caught if issubclass(w.category, CacheUnavailableWarning)]
        assert len(cache_warnings) == 1, [str(w.message) for w in caught]
        assert counted.cache_writes == 0 and len(dataset.failures) == 0
    finally:
        subprocess.run(undo, check=False)


def test_someone_elses_cache_directory_is_never_chmodded(tmp_path: Path) -> None:
    directory = tmp_path / "theirs"
    _fill(directory, entries=1)
    directory.chmod(0o750)
    os.chown(directory, 65534, 65534)
    cache = FrameCache(directory)
    assert cache._get_array("decoded/k0") is not None
    info = directory.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o750, 65534)
