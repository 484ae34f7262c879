"""Reading image sets: SearchImageSets, GetImageSet, GetImageSetMetadata, GetImageFrame,
ListImageSetVersions; and DeleteImageSet."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from typing import Any

from ...codecs import content_type_for
from ..context import Context, handles
from ..errors import ResourceNotFoundException, ValidationException
from ..models import image_sets
from ..models.datastores import require_active
from ..models.image_sets import ARCHIVE_TIER, get_image_set, get_version, get_writable, state_of
from ..service.pagination import fingerprint, page

_EQUAL_MEMBERS = {
    "DICOMPatientId": "patient_id",
    "DICOMAccessionNumber": "accession_number",
    "DICOMStudyId": "study_id",
    "DICOMStudyInstanceUID": "study_uid",
    "DICOMSeriesInstanceUID": "series_uid",
    "isPrimary": "is_primary",
}
_RANGE_MEMBERS = {"createdAt": "created_at", "updatedAt": "updated_at", "DICOMStudyDateAndTime": "study_date_time"}
_SORT_COLUMNS = {"updatedAt": "updated_at", "createdAt": "created_at", "DICOMStudyDateAndTime": "study_date_time"}


def _range_value(member: str, value: Any) -> Any:
    if member == "DICOMStudyDateAndTime":
        date = str(value.get("DICOMStudyDate", ""))
        if not (len(date) == 8 and date.isdigit()):
            raise ValidationException("DICOMStudyDate must be in yyyyMMdd format")
        time = str(value.get("DICOMStudyTime") or "")
        whole, _, fraction = time.partition(".")
        if not whole.isdigit() and whole:
            raise ValidationException("DICOMStudyTime must be in HHmmss.FFFFFF format")
        return f"{date}{(whole + '000000')[:6]}.{(fraction + '000000')[:6]}"
    assert isinstance(value, dt.datetime)
    return value.timestamp()


def _compile_filter(search_filter: dict[str, Any]) -> tuple[str, Any, Any]:
    """(column, low, high) for one filter; EQUAL filters have low == high."""
    operator = search_filter["operator"]
    values = search_filter["values"]
    members = [next(iter(v)) for v in values]
    if operator == "EQUAL":
        if len(values) != 1:
            raise ValidationException("EQUAL takes exactly one value")
        member = members[0]
        if member not in _EQUAL_MEMBERS:
            raise ValidationException(f"EQUAL is not supported for {member}; use BETWEEN with two values")
        value = values[0][member]
        return _EQUAL_MEMBERS[member], int(value) if member == "isPrimary" else value, None
    if len(values) != 2 or members[0] != members[1]:
        raise ValidationException("BETWEEN takes two values of the same attribute (lowerBound, upperBound)")
    member = members[0]
    if member not in _RANGE_MEMBERS:
        raise ValidationException(
            f"BETWEEN is not supported for {member}; it applies to createdAt, updatedAt and DICOMStudyDateAndTime"
        )
    low, high = (_range_value(member, v[member]) for v in values)
    return _RANGE_MEMBERS[member], low, high


def _matches(row: sqlite3.Row, filters: list[tuple[str, Any, Any]]) -> bool:
    for column, low, high in filters:
        value = row[column]
        if high is None:
            if value != low:
                return False
        elif value is None or not (low <= value <= high):
            return False
    return True


def _summary(row: sqlite3.Row, counts: dict[str, tuple[int, int]]) -> dict[str, Any]:
    tags = json.loads(row["dicom_tags"])
    series, instances = counts.get(row["study_uid"], (0, 0))
    tags["DICOMNumberOfStudyRelatedSeries"] = series
    tags["DICOMNumberOfStudyRelatedInstances"] = instances
    return {
        "imageSetId": row["id"],
        "version": row["latest_version"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
        "storageTier": ARCHIVE_TIER,
        "isPrimary": bool(row["is_primary"]),
        "DICOMTags": tags,
    }


@handles("SearchImageSets")
def search_image_sets(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    datastore_id = params["datastoreId"]
    require_active(ctx.store.connection(), datastore_id, ctx.now())
    criteria = params.get("searchCriteria") or {}
    filters = [_compile_filter(f) for f in criteria.get("filters") or []]
    sort = criteria.get("sort")
    column = _SORT_COLUMNS[sort["sortField"]] if sort else "updated_at"
    descending = sort["sortOrder"] == "DESC" if sort else True
    matching = [row for row in image_sets.live(ctx.store.connection(), datastore_id) if _matches(row, filters)]
    # Rows without the sort value (no StudyDate) go last either way; IDs break ties stably.
    matching.sort(key=lambda r: r["id"])
    present = [r for r in matching if r[column] is not None]
    present.sort(key=lambda r: r[column], reverse=descending)
    ordered = present + [r for r in matching if r[column] is None]
    query = fingerprint("SearchImageSets", datastore_id, criteria)
    chunk, token = page(ordered, params.get("nextToken"), params.get("maxResults"), query)
    counts = image_sets.study_counts(ctx.store.connection(), datastore_id) if chunk else {}
    return {
        "imageSetsMetadataSummaries": [_summary(row, counts) for row in chunk],
        "sort": sort,
        "nextToken": token,
    }


def _version_number(params: dict[str, Any], row: sqlite3.Row) -> int:
    return int(params["versionId"]) if params.get("versionId") else int(row["latest_version"])


@handles("GetImageSet")
def get_image_set_handler(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    datastore_id, image_set_id = params["datastoreId"], params["imageSetId"]
    require_active(ctx.store.connection(), datastore_id, ctx.now())
    row = get_image_set(ctx, datastore_id, image_set_id, allow_deleted=True)
    version = _version_number(params, row)
    version_row = get_version(ctx, image_set_id, version)
    if version == row["latest_version"]:
        state, workflow = state_of(row, ctx.now())
        message = row["message"]
    else:
        state, workflow, message = "ACTIVE", version_row["workflow_status"], version_row["message"]
    return {
        "datastoreId": datastore_id,
        "imageSetId": image_set_id,
        "versionId": str(version),
        "imageSetState": state,
        "imageSetWorkflowStatus": workflow,
        "createdAt": row["created_at"],
        "updatedAt": version_row["updated_at"] if version != row["latest_version"] else row["updated_at"],
        "deletedAt": row["deleted_at"] if state == "DELETED" else None,
        "message": message,
        "imageSetArn": ctx.image_set_arn(datastore_id, image_set_id),
        "overrides": {"forced": True} if version_row["forced"] else None,
        "isPrimary": bool(version_row["is_primary"]),
        "storageTier": ARCHIVE_TIER,
    }


@handles("GetImageSetMetadata")
def get_image_set_metadata(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    datastore_id, image_set_id = params["datastoreId"], params["imageSetId"]
    require_active(ctx.store.connection(), datastore_id, ctx.now())
    row = get_image_set(ctx, datastore_id, image_set_id)
    version = _version_number(params, row)
    get_version(ctx, image_set_id, version)
    return {
        "imageSetMetadataBlob": ctx.store.read_metadata(image_set_id, version),
        "contentType": "application/json",
        "contentEncoding": "gzip",
    }


@handles("GetImageFrame")
def get_image_frame(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    datastore_id, image_set_id = params["datastoreId"], params["imageSetId"]
    frame_id = params["imageFrameInformation"]["imageFrameId"]
    syntax = image_sets.frame_transfer_syntax(ctx.store.connection(), datastore_id, image_set_id, frame_id)
    if syntax is None:
        require_active(ctx.store.connection(), datastore_id, ctx.now())
        get_image_set(ctx, datastore_id, image_set_id)
        raise ResourceNotFoundException(f"Image frame {frame_id} not found in image set {image_set_id}")
    return {"imageFrameBlob": ctx.store.read_frame(frame_id), "contentType": content_type_for(syntax)}


@handles("ListImageSetVersions")
def list_image_set_versions(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    datastore_id, image_set_id = params["datastoreId"], params["imageSetId"]
    require_active(ctx.store.connection(), datastore_id, ctx.now())
    row = get_image_set(ctx, datastore_id, image_set_id, allow_deleted=True)
    now = ctx.now()
    items = []
    for version in image_sets.versions(ctx.store.connection(), image_set_id):
        if version["version"] == row["latest_version"]:
            state, workflow = state_of(row, now)
        else:
            state, workflow = "ACTIVE", version["workflow_status"]
        items.append(
            {
                "imageSetId": image_set_id,
                "versionId": str(version["version"]),
                "imageSetState": state,
                "ImageSetWorkflowStatus": workflow,
                # AHI lists the image set's creation time on every version (as GetImageSet does).
                "createdAt": row["created_at"],
                "updatedAt": version["updated_at"],
                "deletedAt": row["deleted_at"] if state == "DELETED" else None,
                "message": version["message"],
                "overrides": {"forced": True} if version["forced"] else None,
                "isPrimary": bool(version["is_primary"]),
            }
        )
    query = fingerprint("ListImageSetVersions", image_set_id)
    chunk, token = page(items, params.get("nextToken"), params.get("maxResults"), query)
    return {"imageSetPropertiesList": chunk, "nextToken": token}


@handles("DeleteImageSet")
def delete_image_set(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    datastore_id, image_set_id = params["datastoreId"], params["imageSetId"]
    require_active(ctx.store.connection(), datastore_id, ctx.now())
    now = ctx.now()
    with ctx.store.transaction() as db:
        get_writable(ctx, datastore_id, image_set_id, now)
        settle = ctx.settings.transition_seconds
        image_sets.mark_deleted(db, image_set_id, now, settle)
    state, workflow = ("LOCKED", "DELETING") if settle > 0 else ("DELETED", "DELETED")
    return {
        "datastoreId": datastore_id,
        "imageSetId": image_set_id,
        "imageSetState": state,
        "imageSetWorkflowStatus": workflow,
    }
