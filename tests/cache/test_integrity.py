"""Processes killed with SIGKILL mid-write and full disks leave the cache and the store consistent."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import numpy as np
import pydicom
import pytest
from botocore.config import Config

from ahi_torch.cache import FrameCache
from ahi_torch.codecs import decode_frame
from ahi_torch.counters import counting
from ahi_torch.local.server import EmbeddedS3
from ahi_torch.sample.synthetic import SeriesSpec, write_series

from ..conftest import wait_until

WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from ahi_torch.cache import FrameCache
    cache = FrameCache(sys.argv[1])
    for k in range(100000):
        frame = np.random.default_rng(k).integers(-2000, 3000, (256, 256)).astype(np.int16)
        cache._put_array(f"decoded/k{k}", frame)
        print(k, flush=True)
    """
)


def _expected(k: int) -> np.ndarray:
    return np.random.default_rng(k).integers(-2000, 3000, (256, 256)).astype(np.int16)


def test_sigkill_during_cache_writes_never_leaves_a_wrong_entry(tmp_path: Path) -> None:
    for round_ in range(3):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None
        for _ in range(15 + round_ * 7):
            writer.stdout.readline()
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    cache = FrameCache(tmp_path)
    cache.check(fix=True)
    found = 0
    with counting() as counted:
        for key in cache.keys():  # noqa: SIM118 - FrameCache.keys() lists the shared index
            array = cache._get_array(key)
            if array is not None:
                np.testing.assert_array_equal(array, _expected(int(key.rsplit("k", 1)[1])))
                found += 1
    assert found >= 15
    assert counted.cache_corrupt_evicted == 0


DISK_FULL = textwrap.dedent(
    """
    import resource, signal, sys, numpy as np
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # writes past the limit fail with EFBIG
    from ahi_torch.cache import FrameCache
    from ahi_torch.counters import COUNTERS
    cache = FrameCache(sys.argv[1])
    first = np.arange(256 * 256, dtype=np.int16).reshape(256, 256)
    assert cache._put_array("decoded/first", first)
    cache.flush()
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # the pack cannot take a second frame
    stored = [cache._put_array(f"decoded/more{k}", first + k) for k in range(6)]
    cache.flush()
    assert not cache._put_array("decoded/late", first), "no longer stored once the disk refused"
    assert COUNTERS.cache_write_failures == 1 and not cache.stats()["storing"]
    assert (cache._get_array("decoded/first") == first).all(), "reads still work"
    print("ok")
    """
)


def test_full_disk_stops_storing_without_failing(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(tmp_path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"
    assert "stopped storing" in completed.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(data_dir: Path, port: int, s3_endpoint_url: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "ahi_torch", "local", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--s3-endpoint-url", s3_endpoint_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("AHI endpoint"), line
    return process


@pytest.mark.service
def test_sigkill_during_import_leaves_no_half_visible_image_set(tmp_path: Path) -> None:
    spec = SeriesSpec(patient_id="KILL", study_key="k", series_key="kill", slices=40, rows=256, columns=256)
    paths = write_series(tmp_path / "dicom", spec)
    data_dir = tmp_path / "store"
    port = _free_port()
    bucket_store = EmbeddedS3()  # S3 outlives the AHI process, as it does on AWS
    session = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1")
    s3 = session.client("s3", endpoint_url=bucket_store.endpoint_url)
    s3.create_bucket(Bucket="input")
    for path in paths:
        s3.upload_file(str(path), "input", f"in/{path.name}")
    server = _serve(data_dir, port, bucket_store.endpoint_url)
    try:
        mi = session.client(
            "medical-imaging", endpoint_url=f"http://127.0.0.1:{port}", config=Config(inject_host_prefix=False)
        )
        datastore_id = mi.create_datastore(datastoreName="kill")["datastoreId"]
        wait_until(
            lambda: mi.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"] == "ACTIVE"
        )
        job = mi.start_dicom_import_job(
            datastoreId=datastore_id,
            dataAccessRoleArn="arn:aws:iam::123456789012:role/import",
            inputS3Uri="s3://input/in/",
            outputS3Uri="s3://input/out/",
        )["jobId"]
        wait_until(
            lambda: (
                mi.get_dicom_import_job(datastoreId=datastore_id, jobId=job)["jobProperties"]["jobStatus"]
                == "IN_PROGRESS"
            )
        )
        # The kill lands after the first frames were written (the process pool starts first).
        wait_until(lambda: any(p.is_file() for p in (data_dir / "blobs" / "frames").rglob("*")), timeout=30)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()

    server = _serve(data_dir, port, bucket_store.endpoint_url)
    try:

        def settled() -> bool:
            for summary in mi.search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"]:
                assert summary["DICOMTags"]["DICOMNumberOfStudyRelatedInstances"] == 40, (
                    "never a half-visible image set"
                )
            status = mi.get_dicom_import_job(datastoreId=datastore_id, jobId=job)["jobProperties"]["jobStatus"]
            return status in ("COMPLETED", "FAILED")

        wait_until(settled, timeout=120, interval=0.05)
        assert mi.get_dicom_import_job(datastoreId=datastore_id, jobId=job)["jobProperties"]["jobStatus"] == "COMPLETED"
        (summary,) = mi.search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"]
        blob = mi.get_image_set_metadata(datastoreId=datastore_id, imageSetId=summary["imageSetId"])[
            "imageSetMetadataBlob"
        ]
        document = json.loads(gzip.decompress(blob.read()))
        instances = document["Study"]["Series"][spec.series_uid]["Instances"]
        assert len(instances) == 40
        ds = pydicom.dcmread(paths[7])
        frame_id = instances[ds.SOPInstanceUID]["ImageFrames"][0]["ID"]
        frame = mi.get_image_frame(
            datastoreId=datastore_id, imageSetId=summary["imageSetId"], imageFrameInformation={"imageFrameId": frame_id}
        )
        np.testing.assert_array_equal(decode_frame(frame["imageFrameBlob"].read()), ds.pixel_array)
        stored = [p for p in (data_dir / "blobs" / "frames").rglob("*") if p.is_file()]
        assert len(stored) == 40, "frames the killed run wrote were swept on restart"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        bucket_store.stop()
    assert os.stat(data_dir).st_mode & 0o777 == 0o700
