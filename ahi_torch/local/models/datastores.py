"""Data store records: their status over time and every query on the ``datastores`` table."""

from __future__ import annotations

import sqlite3
from typing import Any

from ..errors import ConflictException, ResourceNotFoundException

#: Import job states that hold a data store (it cannot be deleted, the job quota counts them).
RUNNING_JOB_STATES = ("SUBMITTED", "IN_PROGRESS")


def datastore_status(row: sqlite3.Row, now: float) -> str:
    if row["deleted"]:
        return "DELETING" if now < row["transition_until"] else "DELETED"
    return "CREATING" if now < row["transition_until"] else "ACTIVE"


def get_row(db: sqlite3.Connection, datastore_id: str) -> sqlite3.Row:
    """The data store's row, deleted or not; ResourceNotFound if it never existed."""
    row = db.execute("SELECT * FROM datastores WHERE id = ?", (datastore_id,)).fetchone()
    if row is None:
        raise ResourceNotFoundException(f"Datastore {datastore_id} not found")
    return row


def require_active(db: sqlite3.Connection, datastore_id: str, now: float) -> sqlite3.Row:
    """The data store's row; ResourceNotFound if absent or deleted, Conflict unless ACTIVE."""
    row = get_row(db, datastore_id)
    status = datastore_status(row, now)
    if status in ("DELETED", "DELETING"):
        raise ResourceNotFoundException(f"Datastore {datastore_id} not found")
    if status != "ACTIVE":
        raise ConflictException(f"Datastore {datastore_id} is {status}, not ACTIVE")
    return row


def by_client_token(db: sqlite3.Connection, token: str | None) -> sqlite3.Row | None:
    return db.execute("SELECT * FROM datastores WHERE client_token = ?", (token,)).fetchone()


def count_live(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COUNT(*) FROM datastores WHERE deleted = 0").fetchone()[0])


def insert(db: sqlite3.Connection, datastore_id: str, params: dict[str, Any], now: float, settle: float) -> None:
    """A new data store from CreateDatastore's parameters, CREATING until ``settle`` seconds from ``now``."""
    db.execute(
        "INSERT INTO datastores (id, name, transition_until, client_token, kms_key_arn, lambda_authorizer_arn,"
        " storage_format, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            datastore_id,
            params.get("datastoreName") or datastore_id,
            now + settle,
            params.get("clientToken"),
            params.get("kmsKeyArn"),
            params.get("lambdaAuthorizerArn"),
            params.get("losslessStorageFormat", "HTJ2K"),
            now,
            now,
        ),
    )


def all_rows(db: sqlite3.Connection) -> list[sqlite3.Row]:
    return db.execute("SELECT * FROM datastores ORDER BY created_at, id").fetchall()


def require_empty(db: sqlite3.Connection, datastore_id: str) -> None:
    """Conflict while the data store holds live image sets or running import jobs."""
    live_sets = db.execute(
        "SELECT COUNT(*) FROM image_sets WHERE datastore_id = ? AND deleted = 0", (datastore_id,)
    ).fetchone()[0]
    if live_sets:
        raise ConflictException(
            f"Datastore {datastore_id} still has {live_sets} image sets; delete all image sets first"
        )
    running = count_running_jobs(db, datastore_id)
    if running:
        raise ConflictException(f"Datastore {datastore_id} has {running} import jobs in progress")


def count_running_jobs(db: sqlite3.Connection, datastore_id: str) -> int:
    return int(
        db.execute(
            "SELECT COUNT(*) FROM import_jobs WHERE datastore_id = ? AND status IN (?, ?)",
            (datastore_id, *RUNNING_JOB_STATES),
        ).fetchone()[0]
    )


def mark_deleted(db: sqlite3.Connection, datastore_id: str, now: float, settle: float) -> None:
    db.execute(
        "UPDATE datastores SET deleted = 1, transition_until = ?, updated_at = ? WHERE id = ?",
        (now + settle, now, datastore_id),
    )
