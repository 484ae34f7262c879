"""StartDICOMImportJob, GetDICOMImportJob and ListDICOMImportJobs (the job records).

The import itself runs in the background (:mod:`.importer`); these handlers only create and
report job records. Job output goes under ``{outputS3Uri}/{datastoreId}-DicomImport-{jobId}/``
and GetDICOMImportJob reports that suffixed prefix as ``outputS3Uri``, as AHI does.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .context import Context, handles
from .datastores import get_row, require_active
from .errors import ResourceNotFoundException, ServiceQuotaExceededException, ValidationException
from .pagination import fingerprint, page


def _properties(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "jobId": row["id"],
        "jobName": row["name"],
        "jobStatus": row["status"],
        "datastoreId": row["datastore_id"],
        "dataAccessRoleArn": row["role_arn"],
        "endedAt": row["ended_at"],
        "submittedAt": row["submitted_at"],
        "inputS3Uri": row["input_uri"],
        "outputS3Uri": row["output_uri"],
        "message": row["message"],
        "importConfiguration": json.loads(row["import_configuration"]) if row["import_configuration"] else None,
    }


def output_prefix(output_uri: str, datastore_id: str, job_id: str) -> str:
    return f"{output_uri.rstrip('/')}/{datastore_id}-DicomImport-{job_id}/"


def _check_s3_uri(name: str, uri: str) -> None:
    """S3 keys may legally hold '..' segments; the local service refuses them rather than guess."""
    path = uri[len("s3://") :].partition("/")[2]
    if any(segment in ("..", ".") for segment in path.split("/")) or any(ord(c) < 32 for c in uri) or "\\" in uri:
        raise ValidationException(
            f"{name} must not contain '.' or '..' path segments, backslashes or control characters"
        )


@handles("StartDICOMImportJob")
def start_dicom_import_job(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    datastore_id = params["datastoreId"]
    _check_s3_uri("inputS3Uri", params["inputS3Uri"])
    _check_s3_uri("outputS3Uri", params["outputS3Uri"])
    require_active(ctx, datastore_id)
    now = ctx.now()
    with ctx.store.transaction() as db:
        existing = db.execute(
            "SELECT * FROM import_jobs WHERE datastore_id = ? AND client_token = ?",
            (datastore_id, params["clientToken"]),
        ).fetchone()
        if existing is not None:
            return {
                "datastoreId": datastore_id,
                "jobId": existing["id"],
                "jobStatus": existing["status"],
                "submittedAt": existing["submitted_at"],
            }
        running = db.execute(
            "SELECT COUNT(*) FROM import_jobs WHERE datastore_id = ? AND status IN ('SUBMITTED', 'IN_PROGRESS')",
            (datastore_id,),
        ).fetchone()[0]
        limit = ctx.settings.quotas.max_concurrent_import_jobs
        if running >= limit:
            raise ServiceQuotaExceededException(f"At most {limit} import jobs may run at once per data store")
        job_id = ctx.new_id()
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
                output_prefix(params["outputS3Uri"], datastore_id, job_id),
                params.get("inputOwnerAccountId"),
                json.dumps(configuration) if configuration else None,
                params["clientToken"],
                now,
            ),
        )
    ctx.jobs.submit(job_id)
    return {"datastoreId": datastore_id, "jobId": job_id, "jobStatus": "SUBMITTED", "submittedAt": now}


@handles("GetDICOMImportJob")
def get_dicom_import_job(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    get_row(ctx, params["datastoreId"])
    row = (
        ctx.store.connection()
        .execute(
            "SELECT * FROM import_jobs WHERE id = ? AND datastore_id = ?", (params["jobId"], params["datastoreId"])
        )
        .fetchone()
    )
    if row is None:
        raise ResourceNotFoundException(f"Import job {params['jobId']} not found in datastore {params['datastoreId']}")
    return {"jobProperties": _properties(row)}


@handles("ListDICOMImportJobs")
def list_dicom_import_jobs(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    datastore_id = params["datastoreId"]
    get_row(ctx, datastore_id)
    rows = (
        ctx.store.connection()
        .execute("SELECT * FROM import_jobs WHERE datastore_id = ? ORDER BY submitted_at DESC, id", (datastore_id,))
        .fetchall()
    )
    wanted = params.get("jobStatus")
    summaries = []
    for row in rows:
        if wanted and row["status"] != wanted:
            continue
        properties = _properties(row)
        summaries.append(
            {
                key: properties[key]
                for key in (
                    "jobId",
                    "jobName",
                    "jobStatus",
                    "datastoreId",
                    "dataAccessRoleArn",
                    "endedAt",
                    "submittedAt",
                    "message",
                )
            }
        )
    query = fingerprint("ListDICOMImportJobs", datastore_id, wanted)
    items, token = page(summaries, params.get("nextToken"), params.get("maxResults"), query)
    return {"jobSummaries": items, "nextToken": token}
