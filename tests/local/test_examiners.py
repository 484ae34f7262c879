"""The import's examiner processes: files handed over in shared memory give what examining them in place gives."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from ahi_torch.local.imports import examiners
from ahi_torch.local.imports.examine import Stored, examine_into
from ahi_torch.local.imports.examiners import ExaminerPool, InputSlots
from ahi_torch.local.models.store import frame_file
from ahi_torch.sample.synthetic import SeriesSpec, write_series

pytestmark = pytest.mark.service  # starts processes of its own


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Three files of growing size: 32x32, 64x64 and 128x128 int16 slices."""
    root = tmp_path_factory.mktemp("examiners")
    found = []
    for side in (32, 64, 128):
        spec = SeriesSpec(patient_id=f"EX{side}", series_key=f"ex{side}", slices=1, rows=side, columns=side)
        found += [path.read_bytes() for path in write_series(root / str(side), spec)]
    return found


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExaminerPool]:
    """One worker; slots start at 1 KB (every file grows one) and files over 16 KB take the pipe."""
    with ExaminerPool(1, slot_bytes=1024, slot_limit=16 * 1024, slot_root=tmp_path_factory.mktemp("slots")) as made:
        yield made


def _frames(stored: Stored, frames_dir: Path) -> list[bytes]:
    return [frame_file(frames_dir, entry["ID"]).read_bytes() for entry in stored.image_frames]


def _same(handed: Stored, here: Stored, frames_dir: Path) -> None:
    assert handed.failure is None and here.failure is None
    assert handed.levels == here.levels and handed.stored_syntax == here.stored_syntax
    assert _frames(handed, frames_dir) == _frames(here, frames_dir), "the same frame bytes stored"


@pytest.mark.parametrize("storage_format", ["HTJ2K", "JPEG_2000_LOSSLESS"])
def test_a_file_in_a_slot_is_examined_as_in_place(
    pool: ExaminerPool, files: list[bytes], tmp_path: Path, storage_format: str
) -> None:
    small = files[0]
    assert 1024 < len(small) <= 16 * 1024, "grows the slot, and fits the limit"
    before = pool.through_slots
    handed = pool.examine(small, storage_format, tmp_path)
    _same(handed, examine_into(small, storage_format, tmp_path), tmp_path)
    assert pool.through_slots == before + 1
    assert (
        handed.stored_syntax
        == {"HTJ2K": "1.2.840.10008.1.2.4.202", "JPEG_2000_LOSSLESS": "1.2.840.10008.1.2.4.90"}[storage_format]
    ), "the data store's storage format reaches the worker"


def test_a_slot_reused_for_a_larger_file_is_read_whole(pool: ExaminerPool, files: list[bytes], tmp_path: Path) -> None:
    """The worker maps a slot once; when the importer grows it, the worker maps it again, not a stale prefix."""
    small, larger = files[0], files[1]
    assert len(small) < len(larger) <= 16 * 1024
    for data in (small, larger, small, larger):
        for _ in range(pool.slots._count):  # every slot, whichever the free list hands out
            _same(pool.examine(data, "HTJ2K", tmp_path), examine_into(data, "HTJ2K", tmp_path), tmp_path)


@pytest.mark.parametrize("data", [b"", b"not a DICOM file" * 100], ids=["empty", "not DICOM"])
def test_a_file_that_cannot_be_imported_fails_as_in_place(pool: ExaminerPool, data: bytes, tmp_path: Path) -> None:
    handed, here = pool.examine(data, "HTJ2K", tmp_path), examine_into(data, "HTJ2K", tmp_path)
    assert handed.failure is not None and handed.failure == here.failure and not handed.image_frames


def test_more_files_in_flight_than_slots_each_get_their_own_result(
    pool: ExaminerPool, files: list[bytes], tmp_path: Path
) -> None:
    """Threads of two jobs share the pool's slots: a thread waits for a free one, and never reads another's file."""
    from concurrent.futures import ThreadPoolExecutor

    inputs = []  # 12 different files (sizes and patients) from 6 threads on 2 slots
    for number in range(12):
        spec = SeriesSpec(patient_id=f"MANY{number}", series_key=f"many{number}", slices=1, rows=16 + 4 * number)
        inputs += [path.read_bytes() for path in write_series(tmp_path / "many" / str(number), spec)]
    with ThreadPoolExecutor(6) as threads:
        results = list(threads.map(lambda data: pool.examine(data, "HTJ2K", tmp_path), inputs))
    for data, stored in zip(inputs, results, strict=True):
        _same(stored, examine_into(data, "HTJ2K", tmp_path), tmp_path)


def test_a_file_over_the_limit_goes_through_the_pipe(pool: ExaminerPool, files: list[bytes], tmp_path: Path) -> None:
    large = files[2]
    assert len(large) > 16 * 1024
    before = pool.through_pipe
    stored = pool.examine(large, "HTJ2K", tmp_path)
    _same(stored, examine_into(large, "HTJ2K", tmp_path), tmp_path)
    assert pool.through_pipe == before + 1
    pixels = pydicom.dcmread(io.BytesIO(large)).pixel_array
    assert stored.image_frames[0]["PixelDataChecksumFromBaseToFullResolution"][-1]["Width"] == pixels.shape[1]


def test_a_slot_that_cannot_grow_hands_over_through_the_pipe(
    files: list[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full /dev/shm refuses the memory up front (ENOSPC), before a write to it could raise SIGBUS."""
    slots = InputSlots(1, 1024, tmp_path)
    full = OSError(errno.ENOSPC, "No space left on device")

    def refuse(fd: int, offset: int, length: int) -> None:
        raise full

    monkeypatch.setattr(examiners.os, "posix_fallocate", refuse)
    with slots.holding(files[0], 1 << 20) as slot:
        assert slot is None
    with slots.holding(files[0][:1024], 1 << 20) as slot:
        assert slot is not None and slot.length == 1024, "what fits the slot as it is still goes in"
    slots.close()


def test_slots_live_in_a_folder_of_their_own_removed_on_close(tmp_path: Path) -> None:
    slots = InputSlots(3, 4096, tmp_path)
    assert slots.folder.parent == tmp_path and slots.folder.name.startswith(f"ahi-import-inputs-{os.getpid()}-")
    assert sorted(path.name for path in slots.folder.iterdir()) == ["0", "1", "2"]
    slots.close()
    assert not slots.folder.exists()
    slots.close()  # again: nothing to unmap or remove, and no wait for slots that are gone


def test_closing_slots_whose_folder_is_gone_does_not_fail(tmp_path: Path) -> None:
    """Something else (a reboot's cleaner, a user) emptied /dev/shm: stopping the service must still succeed."""
    import shutil

    slots = InputSlots(2, 1024, tmp_path)
    shutil.rmtree(slots.folder)
    slots.close()


def test_slot_folders_of_dead_services_are_swept_and_nothing_else(tmp_path: Path) -> None:
    """A service killed by SIGKILL leaves its slots; the next pool removes them, never a folder it did not make."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    dead = tmp_path / f"ahi-import-inputs-{gone.stdout.strip()}-abc"
    alive = tmp_path / f"ahi-import-inputs-{os.getppid()}-abc"
    strangers = [tmp_path / "ahi-import-inputs-notapid-abc", tmp_path / "someone-elses"]
    for folder in (dead, alive, *strangers):
        folder.mkdir()
        (folder / "0").write_bytes(b"x")
    InputSlots(1, 4096, tmp_path).close()
    assert not dead.exists()
    assert alive.exists() and all(folder.exists() for folder in strangers)


def test_the_default_root_is_shared_memory_where_there_is_one() -> None:
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm here")
    slots = InputSlots(1, 4096)
    try:
        assert slots.folder.parent == Path("/dev/shm")
    finally:
        slots.close()
