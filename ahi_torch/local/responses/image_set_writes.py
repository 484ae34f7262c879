"""Writing image sets: UpdateImageSetMetadata (updates and reverts) and CopyImageSet.

Both are asynchronous in AHI: the response reports ``LOCKED`` with ``UPDATING``/``COPYING``
(``COPYING_WITH_READ_ONLY_ACCESS`` on a copy's source), and writes during that window get
ConflictException. As in AHI, a request the model accepts but whose content breaks the metadata
constraints (an attribute that needs ``force``, a VR mismatch, series that do not match) is
accepted and fails on a new version: ``UPDATE_FAILED``/``COPY_FAILED`` with the reason as its
``message`` and the previous metadata unchanged, visible in GetImageSet and ListImageSetVersions.
Malformed payloads, stale versions and locked image sets are still refused at call time.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from ..context import Context, handles
from ..errors import ConflictException, ConstraintViolation, ServiceQuotaExceededException, ValidationException
from ..models import image_sets
from ..models.datastores import require_active
from ..models.documents import apply_update, frame_count, parse_payload, select_instances
from ..models.image_sets import (
    add_frame_refs,
    document_identity,
    frame_ids_of,
    get_image_set,
    get_version,
    get_writable,
    load_document,
    primary_image_set,
    require_version,
    require_writable,
    save_version,
)

_OUTSIDE_MESSAGE_PATTERN = re.compile(r"[^\w -:`]")


def failure_message(error: ConstraintViolation) -> str:
    """The reason a version failed, as the model's ``Message`` allows it (``[\\w -:`]+``, at most 2048)."""
    return _OUTSIDE_MESSAGE_PATTERN.sub(" ", error.message)[:2048]


def _properties(ctx: Context, row: sqlite3.Row, state: str, workflow: str) -> dict[str, Any]:
    return {
        "imageSetId": row["id"],
        "latestVersionId": str(row["latest_version"]),
        "imageSetState": state,
        "imageSetWorkflowStatus": workflow,
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
        "imageSetArn": ctx.image_set_arn(row["datastore_id"], row["id"]),
    }


def _updated_document(ctx: Context, row: sqlite3.Row, updates: dict[str, Any], force: bool) -> dict[str, Any]:
    document = load_document(ctx, row["id"], row["latest_version"])
    if "revertToVersionId" in updates:
        target = int(updates["revertToVersionId"])
        if target >= row["latest_version"]:
            raise ValidationException(f"revertToVersionId {target} must name an earlier version")
        get_version(ctx, row["id"], target)
        return load_document(ctx, row["id"], target)
    dicom_updates = updates["DICOMUpdates"]
    if not dicom_updates:
        raise ValidationException("DICOMUpdates needs updatableAttributes or removableAttributes")
    limit = ctx.settings.quotas.max_update_payload_bytes
    for name in ("updatableAttributes", "removableAttributes"):
        blob = dicom_updates.get(name)
        if blob is not None and len(blob) > limit:
            raise ServiceQuotaExceededException(f"{name} is {len(blob)} bytes; the limit is {limit}")
    if "removableAttributes" in dicom_updates:
        payload = parse_payload(dicom_updates["removableAttributes"], "removableAttributes")
        document = apply_update(document, payload, force, remove=True)
    if "updatableAttributes" in dicom_updates:
        payload = parse_payload(dicom_updates["updatableAttributes"], "updatableAttributes")
        document = apply_update(document, payload, force, remove=False)
    return document


def _study_level_only(updates: dict[str, Any]) -> dict[str, Any]:
    """The Patient/Study-level part of an update, applied to other image sets of the study."""
    dicom_updates = updates.get("DICOMUpdates") or {}
    result = {}
    for name, blob in dicom_updates.items():
        payload = parse_payload(blob, name)
        study = payload.get("Study") or {}
        result[name] = {
            "SchemaVersion": "1.1",
            **({"Patient": payload["Patient"]} if "Patient" in payload else {}),
            **({"Study": {"DICOM": study["DICOM"]}} if "DICOM" in study else {}),
        }
    return result


@handles("UpdateImageSetMetadata")
def update_image_set_metadata(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    datastore_id, image_set_id = params["datastoreId"], params["imageSetId"]
    force = bool(params.get("force"))
    updates = params["updateImageSetMetadataUpdates"]
    require_active(ctx.store.connection(), datastore_id, ctx.now())
    now = ctx.now()
    with ctx.store.transaction() as db:
        row = get_writable(ctx, datastore_id, image_set_id, now)
        require_version(row, params["latestVersionId"])
        failure: str | None = None
        try:
            document = _updated_document(ctx, row, updates, force)
        except ConstraintViolation as error:
            failure, document = failure_message(error), load_document(ctx, row["id"], row["latest_version"])
        targets = [(row, document)]
        if failure is None and params.get("includeStudyImageSets") and "DICOMUpdates" in updates:
            targets += _study_targets(ctx, row, _study_level_only(updates), force, now)
        for target_row, target_document in targets:
            save_version(
                ctx,
                db,
                image_set_id=target_row["id"],
                datastore_id=datastore_id,
                version=target_row["latest_version"] + 1,
                document=target_document,
                is_primary=bool(target_row["is_primary"]),
                lock_status="UPDATING" if target_row is row else "UPDATING_FOR_STUDY_CONSISTENCY",
                settled_status="UPDATE_FAILED" if failure else "UPDATED",
                forced=force,
                message=failure,
            )
        updated = get_image_set(ctx, datastore_id, image_set_id)
    locked = ctx.settings.transition_seconds > 0
    return {
        "datastoreId": datastore_id,
        "imageSetId": image_set_id,
        "latestVersionId": str(updated["latest_version"]),
        "imageSetState": "LOCKED" if locked else "ACTIVE",
        "imageSetWorkflowStatus": "UPDATING" if locked else ("UPDATE_FAILED" if failure else "UPDATED"),
        "createdAt": updated["created_at"],
        "updatedAt": updated["updated_at"],
    }


def _study_targets(
    ctx: Context, row: sqlite3.Row, payloads: dict[str, Any], force: bool, now: float
) -> list[tuple[sqlite3.Row, dict[str, Any]]]:
    targets = []
    for other in image_sets.others_in_study(ctx.store.connection(), row):
        require_writable(other, now)
        document = load_document(ctx, other["id"], other["latest_version"])
        if "removableAttributes" in payloads:
            document = apply_update(document, payloads["removableAttributes"], force, remove=True)
        if "updatableAttributes" in payloads:
            document = apply_update(document, payloads["updatableAttributes"], force, remove=False)
        targets.append((other, document))
    return targets


def _merge_into(destination: dict[str, Any], selection: dict[str, Any], force: bool) -> dict[str, Any]:
    dest_series = list(destination["Study"]["Series"])
    source_series = list(selection["Study"]["Series"])
    if source_series != dest_series and not force:
        raise ConstraintViolation("INVALID_REQUEST: Series of SourceImageSet and DestinationImageSet don't match.")
    if document_identity(selection) != document_identity(destination) and not force:
        raise ConstraintViolation(
            "INVALID_REQUEST: Patient, Study or Series metadata of the source and destination differ; use force"
        )
    merged = {**destination, "Study": {**destination["Study"], "Series": dict(destination["Study"]["Series"])}}
    target_uid = dest_series[0]
    target = dict(merged["Study"]["Series"][target_uid])
    target["Instances"] = dict(target.get("Instances", {}))
    for series in selection["Study"]["Series"].values():
        target["Instances"].update(series.get("Instances", {}))
    merged["Study"]["Series"][target_uid] = target
    return merged


def _copy_into(
    ctx: Context,
    datastore_id: str,
    source_id: str,
    destination_info: dict[str, Any],
    selection: dict[str, Any] | None,
    force: bool,
    now: float,
) -> tuple[str, int, bool, dict[str, Any], str | None]:
    """(destination ID, its new version, primary, the version's document, failure) of a copy into an image set.

    A selection that breaks a constraint is accepted and becomes a COPY_FAILED version holding
    the destination's metadata as it was, as AHI records it; ``selection`` is None when the
    selection itself already failed (see :func:`_select`).
    """
    if destination_info["imageSetId"] == source_id:
        raise ValidationException("The source and destination image sets must differ")
    destination = get_writable(ctx, datastore_id, destination_info["imageSetId"], now)
    require_version(destination, destination_info["latestVersionId"])
    current = load_document(ctx, destination["id"], destination["latest_version"])
    failure: str | None = None
    if selection is None:
        return destination["id"], destination["latest_version"] + 1, bool(destination["is_primary"]), current, None
    try:
        document = _merge_into(current, selection, force)
    except ConstraintViolation as error:
        failure, document = failure_message(error), current
    return destination["id"], destination["latest_version"] + 1, bool(destination["is_primary"]), document, failure


def _select(ctx: Context, source: sqlite3.Row, copies: dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """The part of the source a copy takes, or (its patient and study without series, why the copy fails).

    A selection naming a series or instance the source lacks is accepted and fails the copy
    (COPY_FAILED), as a constraint broken by an update fails it (UPDATE_FAILED). A copy into a new
    image set then leaves that image set with no series: its ID was already answered.
    """
    document = load_document(ctx, source["id"], source["latest_version"])
    try:
        selection = select_instances(document, copies["copiableAttributes"] if copies else None)
    except ConstraintViolation as error:
        return {**document, "Study": {**document["Study"], "Series": {}}}, failure_message(error)
    limit = ctx.settings.quotas.max_frames_per_copy
    if frame_count(selection) > limit:
        raise ServiceQuotaExceededException(f"A copy may hold at most {limit} image frames")
    return selection, None


def _require_no_primary(db: sqlite3.Connection, datastore_id: str, selection: dict[str, Any], primary: bool) -> None:
    """A copy promoted to primary needs a series without a primary image set."""
    if not primary:
        return
    series_uid = next(iter(selection["Study"]["Series"]))
    if primary_image_set(db, datastore_id, series_uid) is not None:
        raise ConflictException(f"Series {series_uid} already has a primary image set")


@handles("CopyImageSet")
def copy_image_set(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    datastore_id, source_id = params["datastoreId"], params["sourceImageSetId"]
    info = params["copyImageSetInformation"]
    force = bool(params.get("force"))
    require_active(ctx.store.connection(), datastore_id, ctx.now())
    now = ctx.now()
    failure: str | None = None
    with ctx.store.transaction() as db:
        source = get_image_set(ctx, datastore_id, source_id)
        if now < source["lock_until"] and source["lock_status"] != "COPYING_WITH_READ_ONLY_ACCESS":
            require_writable(source, now)
        require_version(source, info["sourceImageSet"]["latestVersionId"])
        selection, failure = _select(ctx, source, info["sourceImageSet"].get("DICOMCopies"))
        destination_info = info.get("destinationImageSet")
        if destination_info:
            destination_id, version, primary, document, merge_failure = _copy_into(
                ctx, datastore_id, source_id, destination_info, None if failure else selection, force, now
            )
            failure = failure or merge_failure
        else:
            primary = bool(params.get("promoteToPrimary")) and failure is None
            _require_no_primary(db, datastore_id, selection, primary)
            document, destination_id, version = selection, ctx.new_id(), 1
        save_version(
            ctx,
            db,
            image_set_id=destination_id,
            datastore_id=datastore_id,
            version=version,
            document=document,
            is_primary=primary,
            lock_status="COPYING",
            settled_status="COPY_FAILED" if failure else "COPIED",
            forced=force,
            message=failure,
        )
        add_frame_refs(db, destination_id, frame_ids_of(document))
        image_sets.lock_for_copy(db, source_id, now, ctx.settings.transition_seconds)
        source_row = get_image_set(ctx, datastore_id, source_id)
        destination_row = get_image_set(ctx, datastore_id, destination_id)
    return _copy_response(ctx, source_row, destination_row)


def _copy_response(ctx: Context, source: sqlite3.Row, destination: sqlite3.Row) -> dict[str, Any]:
    """Both image sets LOCKED while the copy settles, then each in its settled state."""
    locked = ctx.settings.transition_seconds > 0
    return {
        "datastoreId": source["datastore_id"],
        "sourceImageSetProperties": _properties(
            ctx,
            source,
            *(("LOCKED", "COPYING_WITH_READ_ONLY_ACCESS") if locked else ("ACTIVE", source["settled_status"])),
        ),
        "destinationImageSetProperties": _properties(
            ctx, destination, *(("LOCKED", "COPYING") if locked else ("ACTIVE", destination["settled_status"]))
        ),
    }
