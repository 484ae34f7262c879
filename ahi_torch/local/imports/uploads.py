"""Put DICOM files into S3 and run a real StartDICOMImportJob on them, as a user of AHI would.

Used by :meth:`LocalAHI.import_dicom`, ``ahi-torch local import DIR``, the demo, the tests and the
benchmarks; it speaks only S3 and the ``medical-imaging`` API through plain boto3 clients.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ...errors import AHIError
from ...polling import poll_until

#: A syntactically valid role ARN; the local service does not evaluate IAM.
LOCAL_ROLE_ARN = "arn:aws:iam::123456789012:role/ahi-torch-local-import"


@dataclass(frozen=True)
class ImportResult:
    """What an import job did, read back from its output manifests."""

    datastore_id: str
    job_id: str
    status: str
    message: str | None
    manifest: dict[str, Any] = field(default_factory=dict)
    successes: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: From submittedAt to endedAt, as the service reports them (not the client's polling).
    job_seconds: float = 0.0

    @property
    def image_set_ids(self) -> list[str]:
        return sorted({s["importResponse"]["imageSetId"] for s in self.successes})

    def image_set_for(self, input_file: str) -> str:
        """The image set an input key (or its file name) went to."""
        for success in self.successes:
            if success["inputFile"] == input_file or success["inputFile"].endswith("/" + input_file):
                return str(success["importResponse"]["imageSetId"])
        raise KeyError(input_file)


def upload_plan(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """(file, key under the job's prefix) of every file to upload; no two files share a key.

    One folder keeps its layout (``a/1.dcm``); one file keeps its name. With several inputs each
    goes under its own numbered folder (``0/1.dcm``, ``1/1.dcm``): scanner exports name files
    ``1.dcm``, ``2.dcm``... in every folder, and keyed by name alone they would overwrite each other.
    """
    inputs = list(map(Path, paths))
    plan: list[tuple[Path, str]] = []
    for number, path in enumerate(inputs):
        folder = f"{number}/" if len(inputs) > 1 else ""
        if path.is_dir():
            plan += [(p, folder + p.relative_to(path).as_posix()) for p in sorted(path.rglob("*")) if p.is_file()]
        elif path.is_file():
            plan.append((path, folder + path.name))
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    keys = [key for _, key in plan]
    if len(set(keys)) != len(keys):  # cannot happen with the layout above; a silent overwrite must not either
        raise ValueError("two input files map to one upload key")
    return plan


def upload(
    s3: Any, plan: list[tuple[Path, str]], bucket: str, prefix: str, progress: bool = False, max_workers: int = 8
) -> list[str]:
    """Upload each (file, key) of ``plan`` to ``s3://bucket/prefix+key``; returns the keys.

    ``max_workers`` uploads run at once (a boto3 client is thread-safe): one at a time, each
    small DICOM file waits a full request round trip.
    """
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception:
        s3.create_bucket(Bucket=bucket)
    keys = [prefix + key for _, key in plan]
    shown = progress and sys.stderr.isatty()
    with (
        ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool,
        tqdm(total=len(plan), desc="upload", unit=" files", disable=not shown) as bar,
    ):
        jobs = zip((path for path, _ in plan), keys, strict=True)
        for _ in pool.map(lambda job: s3.upload_file(str(job[0]), bucket, job[1]), jobs):
            bar.update()
    return keys


def import_paths(
    medical_imaging: Any,
    s3: Any,
    datastore_id: str,
    paths: Iterable[str | Path],
    *,
    bucket: str = "ahi-torch-import",
    progress: bool = False,
    timeout: float = 3600.0,
) -> ImportResult:
    """Upload files or folders under a prefix of their own and import them: the one import path.

    ``LocalAHI.import_dicom`` and ``ahi-torch local import`` both call this. Every file handed in
    is uploaded under its own key, and the job must scan every one of them: a job that saw fewer
    raises instead of reporting success.
    """
    plan = upload_plan(paths)
    if not plan:
        raise FileNotFoundError("no files found to import")
    prefix = f"input/{uuid.uuid4().hex[:12]}/"  # each import reads only its own files
    upload(s3, plan, bucket, prefix, progress=progress)
    result = run_import(
        medical_imaging, s3, datastore_id, f"s3://{bucket}/{prefix}", f"s3://{bucket}/output/", timeout=timeout
    )
    scanned = result.manifest.get("jobSummary", {}).get("numberOfScannedFiles") if result.manifest else None
    if scanned is not None and scanned != len(plan):
        raise AHIError(f"import job {result.job_id} scanned {scanned} of the {len(plan)} files uploaded")
    return result


def _read_ndjson(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def run_import(
    medical_imaging: Any,
    s3: Any,
    datastore_id: str,
    input_uri: str,
    output_uri: str,
    *,
    timeout: float = 3600.0,
) -> ImportResult:
    """Start an import job, wait for it to end, and read its manifests back."""
    job = medical_imaging.start_dicom_import_job(
        datastoreId=datastore_id,
        dataAccessRoleArn=LOCAL_ROLE_ARN,
        inputS3Uri=input_uri,
        outputS3Uri=output_uri,
        jobName=f"ahi-torch-{uuid.uuid4().hex[:8]}",
    )

    def ended() -> dict[str, Any] | None:
        found = medical_imaging.get_dicom_import_job(datastoreId=datastore_id, jobId=job["jobId"])["jobProperties"]
        return found if found["jobStatus"] in ("COMPLETED", "FAILED") else None

    properties = poll_until(ended, timeout=timeout, what=f"import job {job['jobId']} to end")
    took = (properties["endedAt"] - properties["submittedAt"]).total_seconds()
    result = ImportResult(
        datastore_id, job["jobId"], properties["jobStatus"], properties.get("message"), job_seconds=took
    )
    if properties["jobStatus"] != "COMPLETED":
        return result
    out = properties["outputS3Uri"][len("s3://") :]
    bucket, _, prefix = out.partition("/")
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}job-output-manifest.json")["Body"].read())
    return ImportResult(
        datastore_id,
        job["jobId"],
        "COMPLETED",
        None,
        manifest,
        _read_ndjson(s3, bucket, f"{prefix}SUCCESS/success.ndjson"),
        _read_ndjson(s3, bucket, f"{prefix}FAILURE/failure.ndjson"),
        took,
    )
