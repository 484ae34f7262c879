"""TagResource, UntagResource and ListTagsForResource on data store and image set ARNs."""

from __future__ import annotations

from typing import Any

from ..context import Context, handles
from ..models import tags


def _require_resource(ctx: Context, arn: str) -> None:
    tags.require_resource(ctx.store.connection(), arn, *ctx.parse_arn(arn))


@handles("TagResource")
def tag_resource(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    arn = params["resourceArn"]
    _require_resource(ctx, arn)
    with ctx.store.transaction() as db:
        tags.put(db, arn, params["tags"], limit=ctx.settings.quotas.max_tags_per_resource)
    return {}


@handles("UntagResource")
def untag_resource(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    arn = params["resourceArn"]
    _require_resource(ctx, arn)
    with ctx.store.transaction() as db:
        tags.remove(db, arn, params["tagKeys"])
    return {}


@handles("ListTagsForResource")
def list_tags_for_resource(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    arn = params["resourceArn"]
    _require_resource(ctx, arn)
    return {"tags": tags.of(ctx.store.connection(), arn)}
