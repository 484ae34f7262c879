"""Run DICOM import jobs: read P10 files from S3, group them into image sets, store frames, report.

Grouping follows AHI's primary image sets: all instances of a DICOM series go to the series'
primary image set, whether imported in one job or several; re-importing an instance replaces
it and bumps the version. Data whose Patient/Study/Series identity (see
:data:`.levels.IDENTITY`) conflicts with the primary image set goes to a new non-primary one.

Frames are written as blobs while files are processed; everything that makes them visible
(image set rows, versions, frame references, the job's COMPLETED status) is committed in one
SQLite transaction after the output manifests are written, so a crash at any point leaves no
half-visible image set, and a job interrupted by a crash is run again when the service restarts.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..context import Context
from ..models import import_jobs
from ..models.datastores import get_row
from ..models.image_sets import (
    add_frame_refs,
    add_frames,
    frame_ids_of,
    latest_version,
    load_document,
    primary_image_set,
    save_version,
)
from ..models.levels import identity_of
from ..models.store import FileSyncer
from .dicom_json import merge_missing
from .examine import examine_into
from .examiners import ExaminerPool

log = logging.getLogger(__name__)


class JobFailure(Exception):
    """The whole job fails; the message (AHI's error-code style) goes to GetDICOMImportJob."""


@dataclass
class ParsedInstance:
    key: str
    levels: dict[str, Any]
    stored_syntax: str | None
    image_frames: list[dict[str, Any]]

    @property
    def series_uid(self) -> str:
        return str(self.levels["Series"]["SeriesInstanceUID"]).strip(" \x00")

    @property
    def sop_uid(self) -> str:
        return str(self.levels["Instance"]["SOPInstanceUID"]).strip(" \x00")

    @property
    def identity(self) -> str:
        return identity_of(self.levels["Patient"], self.levels["Study"], self.levels["Series"])


@dataclass
class Group:
    """Instances bound for one image set in this job."""

    series_uid: str
    identity: str
    is_primary: bool
    image_set_id: str | None = None
    instances: list[ParsedInstance] = field(default_factory=list)


def _split_uri(uri: str) -> tuple[str, str]:
    without = uri[len("s3://") :]
    bucket, _, prefix = without.partition("/")
    return bucket, prefix


class Importer:
    """Background workers that run import jobs one per thread, resuming unfinished jobs at start."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._threads: list[threading.Thread] = []
        self._pool: ExaminerPool | None = None
        self._lock = threading.Lock()  # guards the pool and the S3 client, each made on first use
        self._s3: Any = None  # made on the first job: building a boto3 client costs ~0.2 s of CPU

    def s3(self) -> Any:
        """The S3 client every job of this service reads and writes with (boto3 clients are thread-safe)."""
        with self._lock:
            if self._s3 is None:
                s3 = self.ctx.settings.s3
                self._s3 = boto3.session.Session().client(
                    "s3",
                    endpoint_url=s3.endpoint_url,
                    region_name=s3.region,
                    aws_access_key_id=s3.access_key_id,
                    aws_secret_access_key=s3.secret_access_key,
                    config=Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=16),
                )
            return self._s3

    def examiners(self) -> ExaminerPool:
        """The process pool that examines files (started on the first large job, kept until stop)."""
        with self._lock:
            if self._pool is None:
                self._pool = ExaminerPool(self.ctx.settings.import_processes or None)
            return self._pool

    def start(self) -> None:
        with self.ctx.store.transaction() as db:
            pending = import_jobs.requeue_unfinished(db)
        for _ in range(max(1, self.ctx.settings.import_workers)):
            thread = threading.Thread(target=self._work, name="ahi-import", daemon=True)
            thread.start()
            self._threads.append(thread)
        for job_id in pending:
            self.submit(job_id)

    def submit(self, job_id: str) -> None:
        self.ctx.jobs.submit(job_id)

    def stop(self) -> None:
        self.ctx.jobs.release(len(self._threads))
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def _work(self) -> None:
        while True:
            job_id = self.ctx.jobs.take()
            if job_id is None:
                return
            try:
                self._run(job_id)
            except Exception:  # a bug must not kill the worker; the job is marked FAILED
                log.exception("import job %s crashed", job_id)
                self._finish(job_id, "FAILED", "INTERNAL_ERROR: the import job stopped unexpectedly")

    def _finish(self, job_id: str, status: str, message: str | None) -> None:
        with self.ctx.store.transaction() as db:
            import_jobs.finish(db, job_id, status, message, self.ctx.now())

    def _run(self, job_id: str) -> None:
        with self.ctx.store.transaction() as db:
            job = import_jobs.claim(db, job_id)
        if job is None:
            return
        try:
            run = ImportRun(self.ctx, dict(job), self.s3(), self.examiners)
            run.run()
        except JobFailure as failure:
            self._finish(job_id, "FAILED", str(failure))


class ImportRun:
    """One execution of one import job."""

    def __init__(
        self, ctx: Context, job: dict[str, Any], s3: Any, examiners: Callable[[], ExaminerPool] | None = None
    ) -> None:
        self.ctx = ctx
        self.job = job
        self.examiners = examiners
        self.pool: ExaminerPool | None = None
        self.s3 = s3
        self.storage_format = get_row(ctx.store.connection(), job["datastore_id"])["storage_format"]
        self.failures: list[dict[str, Any]] = []
        self.syncer = FileSyncer()  # syncs the frames each examiner writes while the rest are examined

    def run(self) -> None:
        if self.job["import_configuration"]:
            raise JobFailure(
                "UNSUPPORTED_IMPORT_CONFIGURATION: DICOM JSON metadata import is not available in the local service"
            )
        keys = self._list_inputs()
        limit = self.ctx.settings.quotas.max_files_per_import
        if len(keys) > limit:
            raise JobFailure(f"FILE_COUNTS_LIMIT_EXCEEDED: {len(keys)} files found, the limit is {limit}")
        workers = min(4, os.cpu_count() or 2)
        settings = self.ctx.settings
        if (
            self.examiners is not None
            and settings.import_processes != 1
            and len(keys) >= settings.import_pool_min_files
        ):
            # Parse, transcode and store frames in processes; threads only read S3 and hand files over.
            self.pool = self.examiners()
            workers = 2 * self.pool.processes  # one file in flight per slot
        with self.syncer:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ahi-import-file") as threads:
                parsed = [p for p in threads.map(self._process, keys) if p is not None]
            self._commit(keys, parsed)

    def _list_inputs(self) -> list[str]:
        bucket, prefix = _split_uri(self.job["input_uri"])
        output_bucket, output_prefix = _split_uri(self.job["output_uri"])
        in_process = self.ctx.in_process_s3
        listed = in_process.list_keys(bucket, prefix) if in_process is not None else None
        if listed is not None:
            return [key for key in listed if self._is_input(key, bucket == output_bucket, output_prefix)]
        keys: list[str] = []
        try:
            for listing in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in listing.get("Contents", []):
                    if self._is_input(item["Key"], bucket == output_bucket, output_prefix):
                        keys.append(item["Key"])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise JobFailure(f"INPUT_S3_ACCESS_FAILED: cannot list {self.job['input_uri']} ({code})") from exc
        except BotoCoreError as exc:
            raise JobFailure("INPUT_S3_UNREACHABLE: the S3 endpoint could not be reached") from exc
        return sorted(keys)

    @staticmethod
    def _is_input(key: str, same_bucket: bool, output_prefix: str) -> bool:
        """Not a folder marker, and not the job's (or an earlier job's) output under the input prefix."""
        return not key.endswith("/") and not (same_bucket and key.startswith(output_prefix))

    def _fail(self, key: str, kind: str, message: str) -> None:
        self.failures.append({"inputFile": key, "exception": {"exceptionType": kind, "message": message}})

    def _process(self, key: str) -> ParsedInstance | None:
        bucket, _ = _split_uri(self.job["input_uri"])
        in_process = self.ctx.in_process_s3
        try:
            found = in_process.read_object(bucket, key) if in_process is not None else None
            data = found if found is not None else self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            self._fail(key, "InternalServerException", f"could not read the object: {type(exc).__name__}")
            return None
        frames_dir = self.ctx.store.frames_dir
        if self.pool is not None:
            stored = self.pool.examine(data, self.storage_format, frames_dir)
        else:
            stored = examine_into(data, self.storage_format, frames_dir)
        if stored.failure is not None:
            self._fail(key, *stored.failure)
            return None
        self.syncer.add(self.ctx.store.frame_path(frame["ID"]) for frame in stored.image_frames)
        return ParsedInstance(key, stored.levels, stored.stored_syntax, stored.image_frames)

    # --- grouping and commit --------------------------------------------------------------------

    def _groups(self, db: sqlite3.Connection, parsed: list[ParsedInstance]) -> list[Group]:
        groups: dict[tuple[str, str], Group] = {}
        primary_identity: dict[str, str] = {}
        for instance in parsed:
            series = instance.series_uid
            if series not in primary_identity:
                existing = primary_image_set(db, self.job["datastore_id"], series)
                if existing is not None:
                    primary_identity[series] = existing["identity"]
                    groups[(series, existing["identity"])] = Group(series, existing["identity"], True, existing["id"])
                else:
                    primary_identity[series] = instance.identity
            identity = instance.identity
            group = groups.get((series, identity))
            if group is None:
                group = Group(series, identity, identity == primary_identity[series])
                groups[(series, identity)] = group
            group.instances.append(instance)
        return [g for g in groups.values() if g.instances]

    def _document(self, group: Group, base: dict[str, Any] | None) -> dict[str, Any]:
        document: dict[str, Any] = base or {
            "SchemaVersion": "1.1",
            "Patient": {"DICOM": {}},
            "Study": {"DICOM": {}, "Series": {}},
        }
        patient = document["Patient"]["DICOM"]
        study = document["Study"]["DICOM"]
        series_entry = document["Study"]["Series"].setdefault(group.series_uid, {"DICOM": {}, "Instances": {}})
        for instance in group.instances:
            merge_missing(patient, instance.levels["Patient"])
            merge_missing(study, instance.levels["Study"])
            merge_missing(series_entry["DICOM"], instance.levels["Series"])
            entry: dict[str, Any] = {"DICOM": instance.levels["Instance"], "DICOMVRs": instance.levels["DICOMVRs"]}
            if instance.stored_syntax:
                entry["StoredTransferSyntaxUID"] = instance.stored_syntax
                entry["ImageFrames"] = instance.image_frames
            series_entry["Instances"][instance.sop_uid] = entry
        return document

    def _commit(self, keys: list[str], parsed: list[ParsedInstance]) -> None:
        """Store every group as a new image set version, write the job's output files, mark it COMPLETED."""
        job_id = self.job["id"]
        self.syncer.finish()  # the frames the examiners wrote are on disk before a record names them
        with self.ctx.store.transaction() as db:
            if not import_jobs.is_running(db, job_id):
                return
            summaries: list[dict[str, Any]] = []
            successes: list[dict[str, Any]] = []
            for group in self._groups(db, parsed):
                response = self._store_group(db, group)
                summaries.append({**response, "numberOfMatchedSOPInstances": len(group.instances)})
                successes += [{"inputFile": instance.key, "importResponse": response} for instance in group.instances]
            self._write_outputs(keys, successes, summaries)
            import_jobs.finish(db, job_id, "COMPLETED", None, self.ctx.now())

    def _store_group(self, db: sqlite3.Connection, group: Group) -> dict[str, Any]:
        """One group's new image set (version 1) or new version of its image set; what the output files say of it."""
        if group.image_set_id is None:
            group.image_set_id = self.ctx.new_id()
            version, base = 1, None
        else:
            latest = latest_version(db, group.image_set_id)
            version, base = latest + 1, load_document(self.ctx, group.image_set_id, latest)
        document = self._document(group, base)
        for instance in group.instances:
            add_frames(db, instance.stored_syntax, instance.image_frames)
        save_version(
            self.ctx,
            db,
            image_set_id=group.image_set_id,
            datastore_id=self.job["datastore_id"],
            version=version,
            document=document,
            is_primary=group.is_primary,
            lock_status=None,
            settled_status="CREATED" if version == 1 else "UPDATED",
        )
        add_frame_refs(db, group.image_set_id, frame_ids_of(document))
        return {"imageSetId": group.image_set_id, "imageSetVersion": version, "isPrimary": group.is_primary}

    def _write_outputs(self, keys: list[str], successes: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> None:
        job = self.job
        prefix = job["output_uri"]
        bucket, key_prefix = _split_uri(prefix)
        failures = sorted(self.failures, key=lambda f: f["inputFile"])
        successes.sort(key=lambda s: s["inputFile"])
        manifest = {
            "jobSummary": {
                "jobId": job["id"],
                "datastoreId": job["datastore_id"],
                "inputS3Uri": job["input_uri"],
                "outputS3Uri": prefix,
                "successOutputS3Uri": f"{prefix}SUCCESS/",
                "failureOutputS3Uri": f"{prefix}FAILURE/",
                "numberOfScannedFiles": len(keys),
                "numberOfImportedFiles": len(successes),
                "numberOfFilesWithCustomerError": sum(
                    1 for f in failures if f["exception"]["exceptionType"] == "ValidationException"
                ),
                "numberOfFilesWithServerError": sum(
                    1 for f in failures if f["exception"]["exceptionType"] != "ValidationException"
                ),
                "numberOfGeneratedImageSets": len(summaries),
                "imageSetsSummary": summaries,
            }
        }
        documents = {
            "job-output-manifest.json": json.dumps(manifest, indent=2),
            "SUCCESS/success.ndjson": "".join(json.dumps(s) + "\n" for s in successes),
            "FAILURE/failure.ndjson": "".join(json.dumps(f) + "\n" for f in failures),
        }
        try:
            for name, body in documents.items():
                self.s3.put_object(Bucket=bucket, Key=f"{key_prefix}{name}", Body=body.encode())
        except (ClientError, BotoCoreError) as exc:
            raise JobFailure(f"OUTPUT_S3_ACCESS_FAILED: cannot write to {prefix}") from exc
