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

from ..polling import poll_until

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

    @property
    def image_set_ids(self) -> list[str]:
        return sorted({s["importResponse"]["imageSetId"] for s in self.successes})

    def image_set_for(self, input_file: str) -> str:
        """The image set an input key (or its file name) went to."""
        for success in self.successes:
            if success["inputFile"] == input_file or success["inputFile"].endswith("/" + input_file):
                return str(success["importResponse"]["imageSetId"])
        raise KeyError(input_file)


def dicom_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files to upload: each path itself, or every file under it when it is a folder (sorted)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


def upload(
    s3: Any,
    files: list[Path],
    bucket: str,
    prefix: str,
    root: Path | None = None,
    progress: bool = False,
    max_workers: int = 8,
) -> list[str]:
    """Upload files under ``s3://bucket/prefix``, keeping paths relative to ``root``; returns keys.

    ``max_workers`` uploads run at once (a boto3 client is thread-safe): one at a time, each
    small DICOM file waits a full request round trip.
    """
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception:
        s3.create_bucket(Bucket=bucket)
    keys = []
    for path in files:
        relative = path.relative_to(root) if root and path.is_relative_to(root) else Path(path.name)
        keys.append(f"{prefix}{relative.as_posix()}")
    shown = progress and sys.stderr.isatty()
    with (
        ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool,
        tqdm(total=len(files), desc="upload", unit=" files", disable=not shown) as bar,
    ):
        for _ in pool.map(lambda job: s3.upload_file(str(job[0]), bucket, job[1]), zip(files, keys, strict=True)):
            bar.update()
    return keys


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
    result = ImportResult(datastore_id, job["jobId"], properties["jobStatus"], properties.get("message"))
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
    )
