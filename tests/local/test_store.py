"""The local service's blob files: frames written in place, and made durable in batches before a commit."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest

from ahi_torch.local.models import store
from ahi_torch.local.models.image_sets import add_frames
from ahi_torch.local.models.store import FileSyncer, Store, frame_file, new_id, write_frame_file


def test_a_new_frame_is_written_under_its_folder(tmp_path: Path) -> None:
    frame_id = new_id()
    write_frame_file(tmp_path, frame_id, b"first")
    assert frame_file(tmp_path, frame_id).read_bytes() == b"first"
    assert frame_file(tmp_path, frame_id).parent.name == frame_id[:2]
    other = frame_id[:2] + new_id()[2:]
    write_frame_file(tmp_path, other, b"second")  # the folder exists now
    assert frame_file(tmp_path, other).read_bytes() == b"second"


def test_a_frame_id_is_never_written_twice(tmp_path: Path) -> None:
    """Frames are written in place because their IDs are new; writing one again would change a stored frame."""
    frame_id = new_id()
    write_frame_file(tmp_path, frame_id, b"stored")
    with pytest.raises(FileExistsError):
        write_frame_file(tmp_path, frame_id, b"other")
    assert frame_file(tmp_path, frame_id).read_bytes() == b"stored"


def test_frames_no_record_names_are_swept_at_start(tmp_path: Path) -> None:
    """A frame written in place by a job that crashed before its commit is an orphan; recorded frames stay."""
    store = Store(tmp_path)
    recorded, orphan = new_id(), new_id()
    for frame_id in (recorded, orphan):
        write_frame_file(store.frames_dir, frame_id, b"bytes")
    temporary = frame_file(store.frames_dir, recorded).parent / ".tmp-partial"
    temporary.write_bytes(b"half")
    with store.transaction() as db:
        add_frames(db, "1.2.840.10008.1.2.4.202", [{"ID": recorded, "FrameSizeInBytes": 5}])
    assert store.sweep_orphans() == 2
    assert frame_file(store.frames_dir, recorded).read_bytes() == b"bytes"
    assert not frame_file(store.frames_dir, orphan).exists() and not temporary.exists()


def test_a_frame_without_a_syntax_is_refused_not_dropped(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as db:
        add_frames(db, None, [{"ID": new_id(), "FrameSizeInBytes": 5}])


def _recording(monkeypatch: pytest.MonkeyPatch) -> list[list[Path]]:
    calls: list[list[Path]] = []
    fsync_each = store._fsync_each

    def record(paths: Iterable[Path]) -> None:
        paths = list(paths)
        fsync_each(paths)
        calls.append(paths)

    monkeypatch.setattr(store, "_fsync_each", record)
    return calls


def _files(folder: Path, count: int) -> list[Path]:
    paths = []
    for _ in range(count):
        frame_id = new_id()
        write_frame_file(folder, frame_id, b"x")
        paths.append(frame_file(folder, frame_id))
    return paths


def test_files_are_synced_in_batches_then_their_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recording(monkeypatch)
    paths = _files(tmp_path, 5)
    with FileSyncer(batch=2) as syncer:
        for path in paths:
            syncer.add([path])
        syncer.finish()
    assert calls[:3] == [paths[:2], paths[2:4], paths[4:]], "full batches as they fill, the rest at finish"
    assert calls[3:] == [sorted({path.parent for path in paths})], "then each folder once"


def test_files_added_from_many_threads_are_all_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recording(monkeypatch)
    paths = _files(tmp_path, 40)
    with FileSyncer(batch=3) as syncer:
        threads = [threading.Thread(target=syncer.add, args=([path],)) for path in paths]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        syncer.finish()
    synced = [path for call in calls for path in call if path.is_file()]
    assert sorted(synced) == sorted(paths), "each file once"


def test_a_failed_sync_is_raised_by_finish(tmp_path: Path) -> None:
    """A file that cannot be synced must stop the commit that would name it."""
    paths = _files(tmp_path, 3)
    paths[1].unlink()
    with FileSyncer(batch=2) as syncer:
        syncer.add(paths)
        with pytest.raises(FileNotFoundError):
            syncer.finish()


def test_nothing_added_syncs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recording(monkeypatch)
    with FileSyncer() as syncer:
        syncer.finish()
    assert calls == []
