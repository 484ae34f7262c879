"""Persistent state of the local AHI: SQLite (WAL) for records, files for frames and metadata.

Layout of a data directory::

    ahi.sqlite3                      datastores, image sets, versions, frames, jobs, tags
    blobs/frames/ab/<frameId>        stored frame bytes, exactly as GetImageFrame returns them
    blobs/metadata/<imageSetId>/<version>.json.gz   the gzip metadata document of each version

Blobs are written first (to a temporary name, then renamed) and the rows that make them
visible are committed afterwards in one transaction, so a crash leaves at most unreferenced
files behind (swept by :meth:`Store.sweep_orphans`), never a half-visible image set. An import
writes its frames without an fsync each (thousands of them cost seconds of CPU here) and makes
them durable before the commit that names them (:func:`sync_files`: after the first fsync has
written them all back, the others find nothing left to write).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
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


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never part.

    ``durable``: on disk before this returns (fsync); otherwise the caller syncs before it commits.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
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
    """Store a frame's bytes as :meth:`Store.read_frame` finds them (an import's pool workers write here too).

    Not yet durable: call :func:`sync_files` before committing a record that names the frame.
    """
    write_atomic(frame_file(frames_dir, frame_id), data, durable=False)


def sync_files(paths: Iterable[Path]) -> None:
    """Make files written without an fsync durable, with their directory entries (only these files, not the disk)."""
    folders = set()
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        folders.add(path.parent)
    for folder in folders:  # the renames that put the files in place
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


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
