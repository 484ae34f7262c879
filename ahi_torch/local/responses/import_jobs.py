"""StartDICOMImportJob, GetDICOMImportJob and ListDICOMImportJobs (the job records).

The import itself runs in the background (:mod:`.importer`); these handlers only create and
report job records. Job output goes under ``{outputS3Uri}/{datastoreId}-DicomImport-{jobId}/``
and GetDICOMImportJob reports that suffixed prefix as ``outputS3Uri``, as AHI does.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..context import Context, handles
from ..errors import ServiceQuotaExceededException, ValidationException
from ..models import import_jobs
from ..models.datastores import count_running_jobs, get_row, require_active
from ..service.pagination import fingerprint, page


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
    require_active(ctx.store.connection(), datastore_id, ctx.now())
    now = ctx.now()
    with ctx.store.transaction() as db:
        existing = import_jobs.by_client_token(db, datastore_id, params["clientToken"])
        if existing is not None:
            return {
                "datastoreId": datastore_id,
                "jobId": existing["id"],
                "jobStatus": existing["status"],
                "submittedAt": existing["submitted_at"],
            }
        limit = ctx.settings.quotas.max_concurrent_import_jobs
        if count_running_jobs(db, datastore_id) >= limit:
            raise ServiceQuotaExceededException(f"At most {limit} import jobs may run at once per data store")
        job_id = ctx.new_id()
        output = output_prefix(params["outputS3Uri"], datastore_id, job_id)
        import_jobs.insert(db, job_id, datastore_id, params, output, now)
    ctx.jobs.submit(job_id)
    return {"datastoreId": datastore_id, "jobId": job_id, "jobStatus": "SUBMITTED", "submittedAt": now}


@handles("GetDICOMImportJob")
def get_dicom_import_job(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    db = ctx.store.connection()
    get_row(db, params["datastoreId"])
    return {"jobProperties": _properties(import_jobs.get(db, params["datastoreId"], params["jobId"]))}


@handles("ListDICOMImportJobs")
def list_dicom_import_jobs(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    datastore_id = params["datastoreId"]
    db = ctx.store.connection()
    get_row(db, datastore_id)
    rows = import_jobs.of_datastore(db, datastore_id)
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
