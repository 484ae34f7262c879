"""Persistent state of the local AHI: SQLite (WAL) for records, files for frames and metadata.

Layout of a data directory::

    ahi.sqlite3                      datastores, image sets, versions, frames, jobs, tags
    blobs/frames/ab/<frameId>        stored frame bytes, exactly as GetImageFrame returns them
    blobs/metadata/<imageSetId>/<version>.json.gz   the gzip metadata document of each version

Blobs are written first (metadata to a temporary name, then renamed; a frame, whose ID is new,
in place) and the rows that make them visible are committed afterwards in one transaction, so a
crash leaves at most unreferenced files behind (swept by :meth:`Store.sweep_orphans`), never a
half-visible image set. An import writes its frames without an fsync each (thousands of them
cost seconds of CPU here) and a :class:`FileSyncer` makes them durable in batches, while the
import goes on, before the commit that names them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datastores (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    transition_until REAL NOT NULL,
    client_token TEXT,
    kms_key_arn TEXT,
    lambda_authorizer_arn TEXT,
    storage_format TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS datastores_token ON datastores(client_token);

CREATE TABLE IF NOT EXISTS image_sets (
    id TEXT PRIMARY KEY,
    datastore_id TEXT NOT NULL REFERENCES datastores(id),
    latest_version INTEGER NOT NULL,
    is_primary INTEGER NOT NULL,
    study_uid TEXT,
    series_uid TEXT,
    identity TEXT,
    deleted INTEGER NOT NULL DEFAULT 0,
    deleted_at REAL,
    lock_until REAL NOT NULL DEFAULT 0,
    lock_status TEXT,
    settled_status TEXT NOT NULL,
    message TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_accessed_at REAL,
    patient_id TEXT,
    accession_number TEXT,
    study_id TEXT,
    study_date_time TEXT,
    instance_count INTEGER NOT NULL DEFAULT 0,
    dicom_tags TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS image_sets_datastore ON image_sets(datastore_id, deleted, updated_at);
CREATE INDEX IF NOT EXISTS image_sets_series ON image_sets(datastore_id, series_uid, is_primary);

CREATE TABLE IF NOT EXISTS image_set_versions (
    image_set_id TEXT NOT NULL REFERENCES image_sets(id),
    version INTEGER NOT NULL,
    workflow_status TEXT NOT NULL,
    message TEXT,
    forced INTEGER NOT NULL DEFAULT 0,
    is_primary INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (image_set_id, version)
);

CREATE TABLE IF NOT EXISTS frames (
    id TEXT PRIMARY KEY,
    transfer_syntax TEXT NOT NULL,
    size INTEGER NOT NULL
);

-- A frame belongs to every image set it was imported or copied into.
CREATE TABLE IF NOT EXISTS frame_refs (
    image_set_id TEXT NOT NULL,
    frame_id TEXT NOT NULL REFERENCES frames(id),
    PRIMARY KEY (image_set_id, frame_id)
);

CREATE TABLE IF NOT EXISTS import_jobs (
    id TEXT PRIMARY KEY,
    datastore_id TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    role_arn TEXT NOT NULL,
    input_uri TEXT NOT NULL,
    output_uri TEXT NOT NULL,
    input_owner TEXT,
    import_configuration TEXT,
    client_token TEXT,
    message TEXT,
    submitted_at REAL NOT NULL,
    ended_at REAL
);
CREATE INDEX IF NOT EXISTS import_jobs_datastore ON import_jobs(datastore_id, submitted_at);
CREATE UNIQUE INDEX IF NOT EXISTS import_jobs_token ON import_jobs(datastore_id, client_token);

CREATE TABLE IF NOT EXISTS tags (
    arn TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (arn, key)
);
"""


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` durably, so that readers see the old file or the whole new one, never part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_id() -> str:
    """A 32-character lower-case hex ID, as AHI issues for data stores, image sets and frames."""
    return uuid.uuid4().hex


def frame_file(frames_dir: Path, frame_id: str) -> Path:
    """Where a frame's bytes live: ``<frames_dir>/<first two characters of its ID>/<ID>``."""
    return frames_dir / frame_id[:2] / frame_id


def write_frame_file(frames_dir: Path, frame_id: str, data: bytes) -> None:
    """Store a new frame's bytes as :meth:`Store.read_frame` finds them (an import's pool workers write here too).

    Written in place, not renamed into place: a frame ID is new, so nothing reads the file before
    a committed record names it, and a crash mid-write leaves a file no record names (swept as an
    orphan at start). Not yet durable: sync it (:class:`FileSyncer`) before committing that record.
    """
    path = frame_file(frames_dir, frame_id)
    try:
        handle = path.open("xb")
    except FileNotFoundError:  # the first frame of its folder
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("xb")
    with handle:
        handle.write(data)


def _fsync_each(paths: Iterable[Path]) -> None:
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


class FileSyncer:
    """Makes files written without an fsync durable, in batches, on a thread of its own, while more are written.

    Only these files and the folders that hold them are synced, not the disk. One fsync per file
    as it was written cost about 0.6 ms of CPU each on this machine (a journal commit each); a batch
    shares the commit, and syncing while the import still examines files hides the disk's wait
    behind that work instead of adding it at the end.

    >>> with FileSyncer() as syncer:
    ...     syncer.add([path])  # as each is written, from any thread
    ...     syncer.finish()  # all on disk, with their directory entries; raises the first error
    """

    def __init__(self, batch: int = 256) -> None:
        self._batch = batch
        self._lock = threading.Lock()
        self._pending: list[Path] = []
        self._folders: set[Path] = set()
        self._syncs: list[Future[None]] = []
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ahi-fsync")

    def add(self, paths: Iterable[Path]) -> None:
        with self._lock:
            self._pending.extend(paths)
            if len(self._pending) >= self._batch:
                self._submit_pending()

    def _submit_pending(self) -> None:
        batch, self._pending = self._pending, []
        self._folders.update(path.parent for path in batch)
        self._syncs.append(self._thread.submit(_fsync_each, batch))

    def finish(self) -> None:
        """Return once every file added (and each folder, for the names that put them there) is synced."""
        with self._lock:
            if self._pending:
                self._submit_pending()
            syncs, folders = list(self._syncs), sorted(self._folders)
        for sync in syncs:
            sync.result()
        if folders:
            _fsync_each(folders)

    def __enter__(self) -> FileSyncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)


class Store:
    """SQLite records plus blob files under one data directory; one connection per thread."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self.frames_dir = self.data_dir / "blobs" / "frames"
        self.metadata_dir = self.data_dir / "blobs" / "metadata"
        self.frames_dir.mkdir(parents=True, exist_ok=True)
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "ahi.sqlite3"
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # executescript commits on its own; every statement is idempotent.
        self.connection().executescript(_SCHEMA)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit mode; use :meth:`transaction` to write)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front (``BEGIN IMMEDIATE``), committed or rolled back whole."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._connections.clear()
        self._local = threading.local()

    # --- blobs ---------------------------------------------------------------------------------

    def frame_path(self, frame_id: str) -> Path:
        return frame_file(self.frames_dir, frame_id)

    def metadata_path(self, image_set_id: str, version: int) -> Path:
        return self.metadata_dir / image_set_id / f"{version}.json.gz"

    def read_frame(self, frame_id: str) -> bytes:
        return self.frame_path(frame_id).read_bytes()

    def write_metadata(self, image_set_id: str, version: int, gz_document: bytes) -> None:
        write_atomic(self.metadata_path(image_set_id, version), gz_document)

    def read_metadata(self, image_set_id: str, version: int) -> bytes:
        return self.metadata_path(image_set_id, version).read_bytes()

    def sweep_orphans(self) -> int:
        """Delete blob files no committed row refers to (left by a crash); returns how many."""
        db = self.connection()
        frame_ids = {row[0] for row in db.execute("SELECT id FROM frames")}
        versions = {(r[0], r[1]) for r in db.execute("SELECT image_set_id, version FROM image_set_versions")}
        removed = 0
        for path in self.frames_dir.glob("*/*"):
            if path.name.startswith(".tmp-") or path.name not in frame_ids:
                path.unlink(missing_ok=True)
                removed += 1
        for path in self.metadata_dir.glob("*/*"):
            version = path.name.split(".", 1)[0]
            if (
                path.name.startswith(".tmp-")
                or not version.isdigit()
                or (path.parent.name, int(version)) not in versions
            ):
                path.unlink(missing_ok=True)
                removed += 1
        return removed
