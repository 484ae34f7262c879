"""Image set records: lookup, workflow state, metadata documents, and writing a new version.

An image set row holds its latest version and a lock window: while ``now < lock_until`` it
reports ``LOCKED`` with the running workflow (UPDATING, COPYING, DELETING...), afterwards
``ACTIVE`` with the settled one (UPDATED, COPIED...) or ``DELETED``. The work itself is done
when the request is accepted, so reads see the new version at once, as AHI's do once the
workflow ends.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from typing import Any

from ...metadata.values import integer, text
from ..context import Context, dumps
from ..errors import ConflictException, ResourceNotFoundException
from .levels import identity_of

ARCHIVE_TIER = "FREQUENT_ACCESS"


def get_image_set(ctx: Context, datastore_id: str, image_set_id: str, *, allow_deleted: bool = False) -> sqlite3.Row:
    """The image set's row; ResourceNotFound when absent from that data store (or deleted)."""
    row = (
        ctx.store.connection()
        .execute("SELECT * FROM image_sets WHERE id = ? AND datastore_id = ?", (image_set_id, datastore_id))
        .fetchone()
    )
    if row is None or (row["deleted"] and not allow_deleted):
        raise ResourceNotFoundException(f"Image set {image_set_id} not found in datastore {datastore_id}")
    return row


def primary_image_set(db: sqlite3.Connection, datastore_id: str, series_uid: str) -> sqlite3.Row | None:
    """The series' primary image set (id, identity) in the data store, if it has one: the one query for it."""
    row: sqlite3.Row | None = db.execute(
        "SELECT id, identity FROM image_sets WHERE datastore_id = ? AND series_uid = ? AND is_primary = 1"
        " AND deleted = 0",
        (datastore_id, series_uid),
    ).fetchone()
    return row


def state_of(row: sqlite3.Row, now: float) -> tuple[str, str]:
    """(imageSetState, imageSetWorkflowStatus) of an image set row at time ``now``."""
    if now < row["lock_until"]:
        return "LOCKED", row["lock_status"]
    if row["deleted"]:
        return "DELETED", "DELETED"
    return "ACTIVE", row["settled_status"]


def require_writable(row: sqlite3.Row, now: float) -> None:
    state, workflow = state_of(row, now)
    if state == "LOCKED":
        raise ConflictException(f"Image set {row['id']} is LOCKED ({workflow}); retry when it is ACTIVE")


def get_writable(ctx: Context, datastore_id: str, image_set_id: str, now: float) -> sqlite3.Row:
    """An image set a write may touch: Conflict while LOCKED (deleting included), NotFound once deleted."""
    row = get_image_set(ctx, datastore_id, image_set_id, allow_deleted=True)
    require_writable(row, now)
    if row["deleted"]:
        raise ResourceNotFoundException(f"Image set {image_set_id} not found in datastore {datastore_id}")
    return row


def require_version(row: sqlite3.Row, latest_version_id: str) -> None:
    if int(latest_version_id) != row["latest_version"]:
        raise ConflictException(
            f"latestVersionId {latest_version_id} is not the latest version of image set {row['id']}"
            f" (latest is {row['latest_version']})"
        )


def get_version(ctx: Context, image_set_id: str, version: int) -> sqlite3.Row:
    row = (
        ctx.store.connection()
        .execute("SELECT * FROM image_set_versions WHERE image_set_id = ? AND version = ?", (image_set_id, version))
        .fetchone()
    )
    if row is None:
        raise ResourceNotFoundException(f"Version {version} of image set {image_set_id} not found")
    return row


def load_document(ctx: Context, image_set_id: str, version: int) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(gzip.decompress(ctx.store.read_metadata(image_set_id, version)))
    return document


def encode_document(document: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(document, separators=(",", ":")).encode(), compresslevel=6)


def dicom_tags(document: dict[str, Any]) -> dict[str, Any]:
    """The DICOMTags summary of a document (counts of study-related series/instances are added later)."""
    patient = document.get("Patient", {}).get("DICOM", {})
    study = document.get("Study", {}).get("DICOM", {})
    series_map = document.get("Study", {}).get("Series", {})
    first: tuple[str | None, dict[str, Any]] = next(iter(series_map.items()), (None, {}))
    series_uid, series = first
    series_dicom = series.get("DICOM", {})
    tags = {
        "DICOMPatientId": text(patient.get("PatientID")),
        "DICOMPatientName": text(patient.get("PatientName")),
        "DICOMPatientBirthDate": text(patient.get("PatientBirthDate")),
        "DICOMPatientSex": text(patient.get("PatientSex")),
        "DICOMStudyInstanceUID": text(study.get("StudyInstanceUID")),
        "DICOMStudyId": text(study.get("StudyID")),
        "DICOMStudyDescription": text(study.get("StudyDescription")),
        "DICOMAccessionNumber": text(study.get("AccessionNumber")),
        "DICOMSeriesInstanceUID": series_uid,
        "DICOMSeriesModality": text(series_dicom.get("Modality")),
        "DICOMSeriesBodyPart": text(series_dicom.get("BodyPartExamined")),
        "DICOMSeriesNumber": integer(series_dicom.get("SeriesNumber")),
        "DICOMStudyDate": text(study.get("StudyDate")),
        "DICOMStudyTime": text(study.get("StudyTime")),
    }
    return {k: v for k, v in tags.items() if v is not None}


def study_date_time(tags: dict[str, Any]) -> str | None:
    """StudyDate + StudyTime as one sortable text ``YYYYMMDDHHMMSS.ffffff`` (missing time = 00:00)."""
    date = tags.get("DICOMStudyDate")
    if not date:
        return None
    time = str(tags.get("DICOMStudyTime") or "").replace(":", "")
    whole, _, fraction = time.partition(".")
    whole = (whole + "000000")[:6]
    return f"{str(date)[:8]}{whole}.{(fraction + '000000')[:6]}"


def count_instances(document: dict[str, Any]) -> int:
    return sum(len(s.get("Instances", {})) for s in document.get("Study", {}).get("Series", {}).values())


def document_identity(document: dict[str, Any]) -> str:
    """The identity digest (see :func:`.levels.identity_of`) of a metadata document's first series."""
    study = document.get("Study", {})
    series: dict[str, Any] = next(iter(study.get("Series", {}).values()), {})
    return identity_of(document.get("Patient", {}).get("DICOM", {}), study.get("DICOM", {}), series.get("DICOM", {}))


def save_version(
    ctx: Context,
    db: sqlite3.Connection,
    *,
    image_set_id: str,
    datastore_id: str,
    version: int,
    document: dict[str, Any],
    is_primary: bool,
    lock_status: str | None,
    settled_status: str,
    forced: bool = False,
    message: str | None = None,
) -> None:
    """Insert or advance an image set to ``version`` with ``document`` (blob written first)."""
    now = ctx.now()
    document = {**document, "DatastoreID": datastore_id, "ImageSetID": image_set_id}
    ctx.store.write_metadata(image_set_id, version, encode_document(document))
    tags = dicom_tags(document)
    lock_until = now + ctx.settings.transition_seconds if lock_status else 0.0
    values = {
        "latest_version": version,
        "is_primary": int(is_primary),
        "study_uid": tags.get("DICOMStudyInstanceUID"),
        "series_uid": tags.get("DICOMSeriesInstanceUID"),
        "lock_until": lock_until,
        "lock_status": lock_status,
        "settled_status": settled_status,
        "message": message,
        "updated_at": now,
        "patient_id": tags.get("DICOMPatientId"),
        "accession_number": tags.get("DICOMAccessionNumber"),
        "study_id": tags.get("DICOMStudyId"),
        "study_date_time": study_date_time(tags),
        "instance_count": count_instances(document),
        "dicom_tags": dumps(tags),
        "identity": document_identity(document),
    }
    exists = db.execute("SELECT 1 FROM image_sets WHERE id = ?", (image_set_id,)).fetchone()
    if exists:
        assignments = ", ".join(f"{k} = ?" for k in values)
        db.execute(f"UPDATE image_sets SET {assignments} WHERE id = ?", (*values.values(), image_set_id))
    else:
        values.update(id=image_set_id, datastore_id=datastore_id, created_at=now)
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        db.execute(f"INSERT INTO image_sets ({columns}) VALUES ({marks})", tuple(values.values()))
    db.execute(
        "INSERT INTO image_set_versions (image_set_id, version, workflow_status, message, forced, is_primary,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (image_set_id, version, settled_status, message, int(forced), int(is_primary), now, now),
    )


def add_frame_refs(db: sqlite3.Connection, image_set_id: str, frame_ids: list[str]) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO frame_refs (image_set_id, frame_id) VALUES (?, ?)",
        [(image_set_id, frame_id) for frame_id in frame_ids],
    )


def frame_ids_of(document: dict[str, Any]) -> list[str]:
    return [
        frame["ID"]
        for series in document.get("Study", {}).get("Series", {}).values()
        for instance in series.get("Instances", {}).values()
        for frame in instance.get("ImageFrames") or []
    ]


def live(db: sqlite3.Connection, datastore_id: str) -> list[sqlite3.Row]:
    """The data store's image sets that are not deleted, in no particular order."""
    return db.execute("SELECT * FROM image_sets WHERE datastore_id = ? AND deleted = 0", (datastore_id,)).fetchall()


def study_counts(db: sqlite3.Connection, datastore_id: str) -> dict[str, tuple[int, int]]:
    """Per study UID: (series, instances) over the data store's live image sets."""
    rows = db.execute(
        "SELECT study_uid, COUNT(DISTINCT series_uid), SUM(instance_count) FROM image_sets"
        " WHERE datastore_id = ? AND deleted = 0 GROUP BY study_uid",
        (datastore_id,),
    )
    return {row[0]: (row[1], row[2] or 0) for row in rows}


def frame_transfer_syntax(db: sqlite3.Connection, datastore_id: str, image_set_id: str, frame_id: str) -> str | None:
    """The stored syntax of a frame of a live image set, or None when the image set does not hold it."""
    found = db.execute(
        "SELECT f.transfer_syntax FROM frame_refs r JOIN image_sets s ON s.id = r.image_set_id"
        " JOIN frames f ON f.id = r.frame_id"
        " WHERE r.image_set_id = ? AND r.frame_id = ? AND s.datastore_id = ? AND s.deleted = 0",
        (image_set_id, frame_id, datastore_id),
    ).fetchone()
    return None if found is None else str(found[0])


def versions(db: sqlite3.Connection, image_set_id: str) -> list[sqlite3.Row]:
    """Every version of the image set, latest first."""
    return db.execute(
        "SELECT * FROM image_set_versions WHERE image_set_id = ? ORDER BY version DESC", (image_set_id,)
    ).fetchall()


def mark_deleted(db: sqlite3.Connection, image_set_id: str, now: float, settle: float) -> None:
    """DELETING for ``settle`` seconds, then DELETED."""
    db.execute(
        "UPDATE image_sets SET deleted = 1, deleted_at = ?, lock_until = ?, lock_status = 'DELETING',"
        " settled_status = 'DELETED', updated_at = ? WHERE id = ?",
        (now + settle, now + settle, now, image_set_id),
    )


def others_in_study(db: sqlite3.Connection, row: sqlite3.Row) -> list[sqlite3.Row]:
    """The live image sets of ``row``'s study in its data store, ``row`` left out."""
    return db.execute(
        "SELECT * FROM image_sets WHERE datastore_id = ? AND study_uid = ? AND id != ? AND deleted = 0",
        (row["datastore_id"], row["study_uid"], row["id"]),
    ).fetchall()


def lock_for_copy(db: sqlite3.Connection, source_id: str, now: float, settle: float) -> None:
    """The source stays readable while it is copied; its updatedAt moves to the copy's time, as AWS's examples show."""
    db.execute(
        "UPDATE image_sets SET lock_until = ?, lock_status = 'COPYING_WITH_READ_ONLY_ACCESS', updated_at = ?"
        " WHERE id = ?",
        (now + settle, now, source_id),
    )


def latest_version(db: sqlite3.Connection, image_set_id: str) -> int:
    return int(db.execute("SELECT latest_version FROM image_sets WHERE id = ?", (image_set_id,)).fetchone()[0])


def add_frames(db: sqlite3.Connection, stored_syntax: str | None, image_frames: list[dict[str, Any]]) -> None:
    """Record an instance's stored frames (their syntax and size); a frame already recorded stays as it is.

    Only a frame already recorded is skipped (``OR IGNORE`` would also drop a row that breaks
    NOT NULL without a word, leaving its file to the orphan sweep).
    """
    db.executemany(
        "INSERT INTO frames (id, transfer_syntax, size) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
        [(frame["ID"], stored_syntax, frame["FrameSizeInBytes"]) for frame in image_frames],
    )
