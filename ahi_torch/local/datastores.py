"""CreateDatastore, GetDatastore, ListDatastores and DeleteDatastore."""

from __future__ import annotations

import sqlite3
from typing import Any

from .context import Context, handles
from .errors import ConflictException, ResourceNotFoundException, ServiceQuotaExceededException
from .pagination import fingerprint, page


def datastore_status(row: sqlite3.Row, now: float) -> str:
    if row["deleted"]:
        return "DELETING" if now < row["transition_until"] else "DELETED"
    return "CREATING" if now < row["transition_until"] else "ACTIVE"


def get_row(ctx: Context, datastore_id: str) -> sqlite3.Row:
    row = ctx.store.connection().execute("SELECT * FROM datastores WHERE id = ?", (datastore_id,)).fetchone()
    if row is None:
        raise ResourceNotFoundException(f"Datastore {datastore_id} not found")
    return row


def require_active(ctx: Context, datastore_id: str) -> sqlite3.Row:
    """The data store's row; ResourceNotFound if absent or deleted, Conflict unless ACTIVE."""
    row = get_row(ctx, datastore_id)
    status = datastore_status(row, ctx.now())
    if status in ("DELETED", "DELETING"):
        raise ResourceNotFoundException(f"Datastore {datastore_id} not found")
    if status != "ACTIVE":
        raise ConflictException(f"Datastore {datastore_id} is {status}, not ACTIVE")
    return row


def _summary(ctx: Context, row: sqlite3.Row, now: float) -> dict[str, Any]:
    return {
        "datastoreId": row["id"],
        "datastoreName": row["name"],
        "datastoreStatus": datastore_status(row, now),
        "datastoreArn": ctx.datastore_arn(row["id"]),
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


@handles("CreateDatastore")
def create_datastore(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    now = ctx.now()
    with ctx.store.transaction() as db:
        token = params.get("clientToken")
        existing = db.execute("SELECT * FROM datastores WHERE client_token = ?", (token,)).fetchone()
        if existing is not None:
            return {"datastoreId": existing["id"], "datastoreStatus": datastore_status(existing, now)}
        live = db.execute("SELECT COUNT(*) FROM datastores WHERE deleted = 0").fetchone()[0]
        if live >= ctx.settings.quotas.max_datastores:
            raise ServiceQuotaExceededException(
                f"Cannot create more than {ctx.settings.quotas.max_datastores} data stores"
            )
        datastore_id = ctx.new_id()
        db.execute(
            "INSERT INTO datastores (id, name, transition_until, client_token, kms_key_arn, lambda_authorizer_arn,"
            " storage_format, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                datastore_id,
                params.get("datastoreName") or datastore_id,
                now + ctx.settings.transition_seconds,
                token,
                params.get("kmsKeyArn"),
                params.get("lambdaAuthorizerArn"),
                params.get("losslessStorageFormat", "HTJ2K"),
                now,
                now,
            ),
        )
        for key, value in (params.get("tags") or {}).items():
            db.execute(
                "INSERT INTO tags (arn, key, value) VALUES (?, ?, ?)", (ctx.datastore_arn(datastore_id), key, value)
            )
    status = "CREATING" if ctx.settings.transition_seconds > 0 else "ACTIVE"
    return {"datastoreId": datastore_id, "datastoreStatus": status}


@handles("GetDatastore")
def get_datastore(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    row = get_row(ctx, params["datastoreId"])
    properties = _summary(ctx, row, ctx.now())
    properties.update(
        kmsKeyArn=row["kms_key_arn"],
        lambdaAuthorizerArn=row["lambda_authorizer_arn"],
        losslessStorageFormat=row["storage_format"],
    )
    return {"datastoreProperties": properties}


@handles("ListDatastores")
def list_datastores(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    now = ctx.now()
    rows = ctx.store.connection().execute("SELECT * FROM datastores ORDER BY created_at, id").fetchall()
    summaries = [_summary(ctx, row, now) for row in rows]
    wanted = params.get("datastoreStatus")
    if wanted:
        summaries = [s for s in summaries if s["datastoreStatus"] == wanted]
    items, token = page(
        summaries, params.get("nextToken"), params.get("maxResults"), fingerprint("ListDatastores", wanted)
    )
    return {"datastoreSummaries": items, "nextToken": token}


@handles("DeleteDatastore")
def delete_datastore(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    datastore_id = params["datastoreId"]
    now = ctx.now()
    with ctx.store.transaction() as db:
        row = get_row(ctx, datastore_id)
        status = datastore_status(row, now)
        if status in ("DELETING", "DELETED"):
            return {"datastoreId": datastore_id, "datastoreStatus": status}
        if status == "CREATING":
            raise ConflictException(f"Datastore {datastore_id} is still CREATING")
        live_sets = db.execute(
            "SELECT COUNT(*) FROM image_sets WHERE datastore_id = ? AND deleted = 0", (datastore_id,)
        ).fetchone()[0]
        if live_sets:
            raise ConflictException(
                f"Datastore {datastore_id} still has {live_sets} image sets; delete all image sets first"
            )
        running = db.execute(
            "SELECT COUNT(*) FROM import_jobs WHERE datastore_id = ? AND status IN ('SUBMITTED', 'IN_PROGRESS')",
            (datastore_id,),
        ).fetchone()[0]
        if running:
            raise ConflictException(f"Datastore {datastore_id} has {running} import jobs in progress")
        db.execute(
            "UPDATE datastores SET deleted = 1, transition_until = ?, updated_at = ? WHERE id = ?",
            (now + ctx.settings.transition_seconds, now, datastore_id),
        )
    status = "DELETING" if ctx.settings.transition_seconds > 0 else "DELETED"
    return {"datastoreId": datastore_id, "datastoreStatus": status}
