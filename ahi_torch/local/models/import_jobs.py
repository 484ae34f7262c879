"""Import job records: every query on the ``import_jobs`` table, from the handlers and the importer."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..errors import ResourceNotFoundException
from .datastores import RUNNING_JOB_STATES


def by_client_token(db: sqlite3.Connection, datastore_id: str, token: str) -> sqlite3.Row | None:
    return db.execute(
        "SELECT * FROM import_jobs WHERE datastore_id = ? AND client_token = ?", (datastore_id, token)
    ).fetchone()


def insert(
    db: sqlite3.Connection, job_id: str, datastore_id: str, params: dict[str, Any], output_uri: str, now: float
) -> None:
    """A SUBMITTED job from StartDICOMImportJob's parameters, writing under ``output_uri``."""
    configuration = params.get("importConfiguration")
    db.execute(
        "INSERT INTO import_jobs (id, datastore_id, name, status, role_arn, input_uri, output_uri, input_owner,"
        " import_configuration, client_token, submitted_at) VALUES (?, ?, ?, 'SUBMITTED', ?, ?, ?, ?, ?, ?, ?)",
        (
            job_id,
            datastore_id,
            params.get("jobName") or f"DicomImport-{job_id}",
            params["dataAccessRoleArn"],
            params["inputS3Uri"],
            output_uri,
            params.get("inputOwnerAccountId"),
            json.dumps(configuration) if configuration else None,
            params["clientToken"],
            now,
        ),
    )


def get(db: sqlite3.Connection, datastore_id: str, job_id: str) -> sqlite3.Row:
    row = db.execute("SELECT * FROM import_jobs WHERE id = ? AND datastore_id = ?", (job_id, datastore_id)).fetchone()
    if row is None:
        raise ResourceNotFoundException(f"Import job {job_id} not found in datastore {datastore_id}")
    return row


def of_datastore(db: sqlite3.Connection, datastore_id: str) -> list[sqlite3.Row]:
    """The data store's jobs, latest submitted first."""
    return db.execute(
        "SELECT * FROM import_jobs WHERE datastore_id = ? ORDER BY submitted_at DESC, id", (datastore_id,)
    ).fetchall()


def requeue_unfinished(db: sqlite3.Connection) -> list[str]:
    """After a restart: jobs that were running go back to SUBMITTED; all unfinished ones, oldest first."""
    pending = [
        row[0]
        for row in db.execute(
            "SELECT id FROM import_jobs WHERE status IN (?, ?) ORDER BY submitted_at", RUNNING_JOB_STATES
        )
    ]
    db.execute("UPDATE import_jobs SET status = 'SUBMITTED' WHERE status = 'IN_PROGRESS'")
    return pending


def claim(db: sqlite3.Connection, job_id: str) -> sqlite3.Row | None:
    """The job, now IN_PROGRESS, if it was SUBMITTED; None if another worker has it or it is gone."""
    job = db.execute("SELECT * FROM import_jobs WHERE id = ?", (job_id,)).fetchone()
    if job is None or job["status"] != "SUBMITTED":
        return None
    db.execute("UPDATE import_jobs SET status = 'IN_PROGRESS' WHERE id = ?", (job_id,))
    return job


def is_running(db: sqlite3.Connection, job_id: str) -> bool:
    current = db.execute("SELECT status FROM import_jobs WHERE id = ?", (job_id,)).fetchone()
    return current is not None and current["status"] == "IN_PROGRESS"


def finish(db: sqlite3.Connection, job_id: str, status: str, message: str | None, now: float) -> None:
    db.execute(
        "UPDATE import_jobs SET status = ?, message = ?, ended_at = ? WHERE id = ?", (status, message, now, job_id)
    )
