"""CreateDatastore, GetDatastore, ListDatastores and DeleteDatastore."""

from __future__ import annotations

import sqlite3
from typing import Any

from ..context import Context, handles
from ..errors import ConflictException, ServiceQuotaExceededException
from ..models import datastores, tags
from ..models.datastores import datastore_status
from ..service.pagination import fingerprint, page


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
        existing = datastores.by_client_token(db, params.get("clientToken"))
        if existing is not None:
            return {"datastoreId": existing["id"], "datastoreStatus": datastore_status(existing, now)}
        limit = ctx.settings.quotas.max_datastores
        if datastores.count_live(db) >= limit:
            raise ServiceQuotaExceededException(f"Cannot create more than {limit} data stores")
        datastore_id = ctx.new_id()
        datastores.insert(db, datastore_id, params, now, ctx.settings.transition_seconds)
        tags.put(db, ctx.datastore_arn(datastore_id), params.get("tags") or {})
    status = "CREATING" if ctx.settings.transition_seconds > 0 else "ACTIVE"
    return {"datastoreId": datastore_id, "datastoreStatus": status}


@handles("GetDatastore")
def get_datastore(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    row = datastores.get_row(ctx.store.connection(), params["datastoreId"])
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
    summaries = [_summary(ctx, row, now) for row in datastores.all_rows(ctx.store.connection())]
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
        status = datastore_status(datastores.get_row(db, datastore_id), now)
        if status in ("DELETING", "DELETED"):
            return {"datastoreId": datastore_id, "datastoreStatus": status}
        if status == "CREATING":
            raise ConflictException(f"Datastore {datastore_id} is still CREATING")
        datastores.require_empty(db, datastore_id)
        datastores.mark_deleted(db, datastore_id, now, ctx.settings.transition_seconds)
    status = "DELETING" if ctx.settings.transition_seconds > 0 else "DELETED"
    return {"datastoreId": datastore_id, "datastoreStatus": status}
