"""TagResource, UntagResource and ListTagsForResource on data store and image set ARNs."""

from __future__ import annotations

from typing import Any

from .context import Context, handles
from .errors import ResourceNotFoundException, ValidationException


def _require_resource(ctx: Context, arn: str) -> None:
    datastore_id, image_set_id = ctx.parse_arn(arn)
    db = ctx.store.connection()
    if image_set_id is None:
        found = db.execute("SELECT 1 FROM datastores WHERE id = ? AND deleted = 0", (datastore_id,)).fetchone()
    else:
        found = db.execute(
            "SELECT 1 FROM image_sets WHERE id = ? AND datastore_id = ? AND deleted = 0", (image_set_id, datastore_id)
        ).fetchone()
    if found is None:
        raise ResourceNotFoundException(f"Resource {arn} not found")


@handles("TagResource")
def tag_resource(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    arn = params["resourceArn"]
    _require_resource(ctx, arn)
    with ctx.store.transaction() as db:
        existing = {row[0] for row in db.execute("SELECT key FROM tags WHERE arn = ?", (arn,))}
        limit = ctx.settings.quotas.max_tags_per_resource
        if len(existing | set(params["tags"])) > limit:
            raise ValidationException(f"A resource can have at most {limit} tags")
        for key, value in params["tags"].items():
            db.execute("INSERT OR REPLACE INTO tags (arn, key, value) VALUES (?, ?, ?)", (arn, key, value))
    return {}


@handles("UntagResource")
def untag_resource(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    arn = params["resourceArn"]
    _require_resource(ctx, arn)
    with ctx.store.transaction() as db:
        db.executemany("DELETE FROM tags WHERE arn = ? AND key = ?", [(arn, key) for key in params["tagKeys"]])
    return {}


@handles("ListTagsForResource")
def list_tags_for_resource(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    arn = params["resourceArn"]
    _require_resource(ctx, arn)
    rows = ctx.store.connection().execute("SELECT key, value FROM tags WHERE arn = ? ORDER BY key", (arn,))
    return {"tags": {row["key"]: row["value"] for row in rows}}
