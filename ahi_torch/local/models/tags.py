"""Tags of data store and image set ARNs: every query on the ``tags`` table."""

from __future__ import annotations

import sqlite3

from ..errors import ResourceNotFoundException, ValidationException


def require_resource(db: sqlite3.Connection, arn: str, datastore_id: str, image_set_id: str | None) -> None:
    """ResourceNotFound unless the ARN's data store (or image set) exists and is not deleted."""
    if image_set_id is None:
        found = db.execute("SELECT 1 FROM datastores WHERE id = ? AND deleted = 0", (datastore_id,)).fetchone()
    else:
        found = db.execute(
            "SELECT 1 FROM image_sets WHERE id = ? AND datastore_id = ? AND deleted = 0", (image_set_id, datastore_id)
        ).fetchone()
    if found is None:
        raise ResourceNotFoundException(f"Resource {arn} not found")


def put(db: sqlite3.Connection, arn: str, tags: dict[str, str], limit: int | None = None) -> None:
    """Add or replace ``tags``; ValidationException if the resource would hold more than ``limit``."""
    if limit is not None:
        existing = {row[0] for row in db.execute("SELECT key FROM tags WHERE arn = ?", (arn,))}
        if len(existing | set(tags)) > limit:
            raise ValidationException(f"A resource can have at most {limit} tags")
    db.executemany(
        "INSERT OR REPLACE INTO tags (arn, key, value) VALUES (?, ?, ?)", [(arn, k, v) for k, v in tags.items()]
    )


def remove(db: sqlite3.Connection, arn: str, keys: list[str]) -> None:
    db.executemany("DELETE FROM tags WHERE arn = ? AND key = ?", [(arn, key) for key in keys])


def of(db: sqlite3.Connection, arn: str) -> dict[str, str]:
    return {
        row["key"]: row["value"] for row in db.execute("SELECT key, value FROM tags WHERE arn = ? ORDER BY key", (arn,))
    }
