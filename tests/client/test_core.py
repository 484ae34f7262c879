"""AHIClient against the local service: every method, pagination, waiters, typed errors, workers."""

from __future__ import annotations

import json
import os
import pickle
import socket
import zlib
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from torch.utils.data import DataLoader, Dataset

from ahi_torch.client import AHIClient, ClientConfig, ImageFrame, dicom_updates
from ahi_torch.errors import (
    ConfigError,
    Conflict,
    EndpointUnreachable,
    QuotaExceeded,
    ResourceNotFound,
    ServiceError,
    ValidationError,
    WaiterFailure,
    WaiterTimeout,
)
from ahi_torch.local import LocalAHI
from ahi_torch.local.imports.uploads import LOCAL_ROLE_ARN

from ..conftest import ImportedData


@pytest.fixture(scope="module")
def client(ahi: LocalAHI) -> AHIClient:
    return ahi.client()


def _first_frame(document: dict) -> tuple[str, str]:
    series_uid, series = next(iter(document["Study"]["Series"].items()))
    instance = next(iter(series["Instances"].values()))
    return series_uid, instance["ImageFrames"][0]["ID"]


def test_config_rules() -> None:
    with pytest.raises(ConfigError, match="retry_mode"):
        ClientConfig(retry_mode="sometimes")
    with pytest.raises(ConfigError, match="both access_key_id and secret_access_key"):
        ClientConfig(access_key_id="only-half")
    with pytest.raises(ConfigError, match="endpoint_url"):
        ClientConfig(endpoint_url="localhost:8080")
    local = AHIClient(
        ClientConfig(region="us-east-1", endpoint_url="http://127.0.0.1:1", access_key_id="a", secret_access_key="b")
    )
    assert local.boto3.meta.config.inject_host_prefix is False
    aws = AHIClient(ClientConfig(region="us-east-1", access_key_id="a", secret_access_key="b"))
    assert aws.boto3.meta.config.inject_host_prefix is True
    assert aws.boto3.meta.config.max_pool_connections >= 16
    assert "secret" not in repr(ClientConfig(access_key_id="a", secret_access_key="secret"))


def test_datastore_methods_and_waiters(client: AHIClient) -> None:
    created = client.create_datastore(datastoreName="client-test", tags={"owner": "tests"})
    datastore_id = created["datastoreId"]
    other_id = client.create_datastore(datastoreName="client-test-2")["datastoreId"]
    assert "ResponseMetadata" not in created
    properties = client.wait_for_datastore(datastore_id, timeout=10)
    assert properties["datastoreStatus"] == "ACTIVE"
    assert client.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreName"] == "client-test"
    assert {datastore_id, other_id} <= {d["datastoreId"] for d in client.iter_datastores(maxResults=1)}
    assert client.list_datastores(maxResults=1)["nextToken"]
    arn = properties["datastoreArn"]
    client.tag_resource(resourceArn=arn, tags={"stage": "dev"})
    client.untag_resource(resourceArn=arn, tagKeys=["owner"])
    assert client.list_tags_for_resource(resourceArn=arn)["tags"] == {"stage": "dev"}
    with pytest.raises(WaiterTimeout, match=r"did not reach DELETED within 0.3 s \(last status: ACTIVE\)"):
        client.wait_for_datastore(datastore_id, status="DELETED", timeout=0.3)
    assert client.delete_datastore(datastoreId=datastore_id)["datastoreStatus"] in ("DELETING", "DELETED")
    assert client.wait_for_datastore(datastore_id, status="DELETED", timeout=10)["datastoreStatus"] == "DELETED"
    client.wait_for_datastore(other_id, timeout=10)
    client.delete_datastore(datastoreId=other_id)


def test_import_job_methods(ahi: LocalAHI, client: AHIClient, synthetic_import: ImportedData) -> None:
    datastore_id = synthetic_import.datastore_id
    job_id = synthetic_import.result.job_id
    properties = client.wait_for_import_job(datastore_id, job_id, timeout=10)
    assert properties["jobStatus"] == "COMPLETED"
    assert client.get_dicom_import_job(datastoreId=datastore_id, jobId=job_id)["jobProperties"]["jobId"] == job_id
    assert job_id in {j["jobId"] for j in client.iter_import_jobs(datastoreId=datastore_id, maxResults=1)}
    assert client.list_dicom_import_jobs(datastoreId=datastore_id, jobStatus="COMPLETED")["jobSummaries"]
    started = client.start_dicom_import_job(
        datastoreId=datastore_id,
        dataAccessRoleArn=LOCAL_ROLE_ARN,
        inputS3Uri="s3://missing-bucket/in/",
        outputS3Uri="s3://missing-bucket/out/",
    )
    with pytest.raises(WaiterFailure, match="INPUT_S3_ACCESS_FAILED"):
        client.wait_for_import_job(datastore_id, started["jobId"], timeout=10)


def test_image_set_reads(client: AHIClient, synthetic_import: ImportedData) -> None:
    datastore_id = synthetic_import.datastore_id
    summaries = list(client.iter_image_sets(datastoreId=datastore_id, maxResults=1))
    assert {s["imageSetId"] for s in summaries} >= set(synthetic_import.result.image_set_ids)
    assert len(summaries) == len({s["imageSetId"] for s in summaries})
    page = client.search_image_sets(datastoreId=datastore_id, maxResults=1)
    assert len(page["imageSetsMetadataSummaries"]) == 1 and page["nextToken"]
    image_set_id = synthetic_import.result.image_set_for("ct/ct-0000.dcm")
    assert client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)["imageSetState"] == "ACTIVE"
    document = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
    assert document["ImageSetID"] == image_set_id
    raw = client.get_image_set_metadata_bytes(datastoreId=datastore_id, imageSetId=image_set_id, versionId="1")
    assert json.loads(raw) == document
    _, frame_id = _first_frame(document)
    frame = client.get_image_frame(
        datastoreId=datastore_id, imageSetId=image_set_id, imageFrameInformation={"imageFrameId": frame_id}
    )
    assert isinstance(frame, ImageFrame) and frame.content_type == "image/jph"
    data, content_type = frame
    assert data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" and content_type == "image/jph"
    versions = list(client.iter_image_set_versions(datastoreId=datastore_id, imageSetId=image_set_id))
    assert [v["versionId"] for v in versions][-1] == "1"


def test_image_set_writes(ahi: LocalAHI, client: AHIClient, tmp_path: Path) -> None:
    from ahi_torch.sample.synthetic import SeriesSpec, write_series

    spec = SeriesSpec(patient_id="WRITES", study_key="w", series_key="w", slices=2, rows=8, columns=8)
    write_series(tmp_path, spec)
    result = ahi.import_dicom(tmp_path)
    datastore_id, (image_set_id,) = result.datastore_id, result.image_set_ids
    updated = client.update_image_set_metadata(
        datastoreId=datastore_id,
        imageSetId=image_set_id,
        latestVersionId="1",
        updateImageSetMetadataUpdates=dicom_updates(updatable={"Study": {"DICOM": {"StudyDescription": "Reviewed"}}}),
    )
    assert updated["latestVersionId"] == "2"
    with pytest.raises(Conflict):
        client.update_image_set_metadata(
            datastoreId=datastore_id,
            imageSetId=image_set_id,
            latestVersionId="2",
            updateImageSetMetadataUpdates=dicom_updates(updatable={"Study": {"DICOM": {"StudyDescription": "again"}}}),
        )
    settled = client.wait_for_image_set(datastore_id, image_set_id, timeout=10)
    assert settled["imageSetWorkflowStatus"] == "UPDATED"
    assert (
        client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)["Study"]["DICOM"][
            "StudyDescription"
        ]
        == "Reviewed"
    )
    copied = client.copy_image_set(
        datastoreId=datastore_id,
        sourceImageSetId=image_set_id,
        copyImageSetInformation={"sourceImageSet": {"latestVersionId": "2"}},
    )
    copy_id = copied["destinationImageSetProperties"]["imageSetId"]
    client.wait_for_image_set(datastore_id, copy_id, timeout=10)
    assert client.delete_image_set(datastoreId=datastore_id, imageSetId=copy_id)["imageSetWorkflowStatus"] in (
        "DELETING",
        "DELETED",
    )
    assert client.wait_for_image_set(datastore_id, copy_id, status="DELETED", timeout=10)["imageSetState"] == "DELETED"
    with pytest.raises(WaiterFailure, match="deleted"):
        client.wait_for_image_set(datastore_id, copy_id, status="ACTIVE", timeout=10)


def test_typed_errors_wrap_botocore(client: AHIClient, synthetic_import: ImportedData) -> None:
    with pytest.raises(ResourceNotFound) as info:
        client.get_datastore(datastoreId="f" * 32)
    assert isinstance(info.value, ServiceError)
    assert info.value.code == "ResourceNotFoundException" and info.value.status == 404
    assert isinstance(info.value.__cause__, ClientError)
    with pytest.raises(ValidationError, match="less than or equal to 50"):
        client.list_datastores(maxResults=99)
    with pytest.raises(QuotaExceeded):
        client.update_image_set_metadata(
            datastoreId=synthetic_import.datastore_id,
            imageSetId=synthetic_import.result.image_set_ids[0],
            latestVersionId="1",
            updateImageSetMetadataUpdates=dicom_updates(
                updatable={"Study": {"DICOM": {"StudyDescription": "x" * 20000}}}
            ),
        )


def test_unreachable_endpoint_is_one_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = AHIClient(
        ClientConfig(
            region="us-east-1",
            endpoint_url=f"http://127.0.0.1:{port}",
            access_key_id="a",
            secret_access_key="b",
            max_attempts=1,
        )
    )
    with pytest.raises(EndpointUnreachable, match=f"127.0.0.1:{port}"):
        client.list_datastores()


def test_pickles_without_a_connection(client: AHIClient) -> None:
    client.list_datastores()
    assert client.connected
    clone = pickle.loads(pickle.dumps(client))
    assert not clone.connected and clone.config == client.config
    assert clone.list_datastores()["datastoreSummaries"] is not None


class FrameChecksums(Dataset):
    """Fetch one frame per item through a shared AHIClient (used by DataLoader workers)."""

    def __init__(self, client: AHIClient, datastore_id: str, frames: list[tuple[str, str]]) -> None:
        self.client, self.datastore_id, self.frames = client, datastore_id, frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        image_set_id, frame_id = self.frames[index]
        frame = self.client.get_image_frame(
            datastoreId=self.datastore_id, imageSetId=image_set_id, imageFrameInformation={"imageFrameId": frame_id}
        )
        return index, zlib.crc32(frame.data), os.getpid()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_share_one_client(client: AHIClient, synthetic_import: ImportedData, context: str) -> None:
    datastore_id = synthetic_import.datastore_id
    image_set_id = synthetic_import.result.image_set_for("ct/ct-0000.dcm")
    document = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
    frames = [
        (image_set_id, instance["ImageFrames"][0]["ID"])
        for series in document["Study"]["Series"].values()
        for instance in series["Instances"].values()
    ]
    client.list_datastores()  # the parent has a live connection pool before the workers start
    expected = {
        i: zlib.crc32(
            client.get_image_frame(
                datastoreId=datastore_id, imageSetId=s, imageFrameInformation={"imageFrameId": f}
            ).data
        )
        for i, (s, f) in enumerate(frames)
    }
    loader = DataLoader(
        FrameChecksums(client, datastore_id, frames), batch_size=4, num_workers=2, multiprocessing_context=context
    )
    seen = {}
    pids = set()
    for indices, checksums, workers in loader:
        seen.update(zip(indices.tolist(), checksums.tolist(), strict=True))
        pids.update(workers.tolist())
    assert seen == expected
    assert len(pids) == 2 and os.getpid() not in pids, "both worker processes fetched frames with their own client"


def test_every_operation_of_botocores_model_is_a_method_that_passes_arguments_through(
    client: AHIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import botocore.session
    from botocore import xform_name
    from botocore.stub import Stubber

    from ahi_torch.client import core

    model = botocore.session.get_session().get_service_model("medical-imaging")
    assert len(model.operation_names) >= 18
    for name in model.operation_names:
        assert xform_name(name) in dir(client) and callable(getattr(client, xform_name(name))), name
    with pytest.raises(AttributeError):
        client.no_such_operation  # noqa: B018
    # Arguments travel as given (None dropped): a parameter botocore knows needs no edit here.
    fresh = AHIClient(client.config)
    with Stubber(fresh.boto3) as stub:
        stub.add_response("list_tags_for_resource", {"tags": {"a": "b"}}, {"resourceArn": "arn:aws:medical-imaging:x"})
        stub.add_response("list_datastores", {"datastoreSummaries": []}, {"datastoreStatus": "ACTIVE", "maxResults": 3})
        assert fresh.list_tags_for_resource(resourceArn="arn:aws:medical-imaging:x") == {"tags": {"a": "b"}}
        assert fresh.list_datastores(datastoreStatus="ACTIVE", maxResults=3, nextToken=None) == {
            "datastoreSummaries": []
        }
    # A new operation in botocore's model is a method at once (the model is the only list).
    monkeypatch.setattr(
        core, "_methods", lambda: {**{xform_name(n): n for n in model.operation_names}, "new_op": "NewOp"}
    )
    assert "new_op" in dir(fresh) and callable(fresh.new_op)


def test_iterators_page_with_botocores_paginator_model_through_the_budget(
    ahi: LocalAHI, client: AHIClient, synthetic_import: ImportedData
) -> None:
    calls: list[str] = []

    class Counting:
        def acquire(self, operation: str) -> None:
            calls.append(operation)

    paged = AHIClient(client.config)
    paged._limiter = Counting()  # type: ignore[assignment]
    summaries = list(paged.iter_image_sets(datastoreId=synthetic_import.datastore_id, maxResults=1))
    everything = client.search_image_sets(datastoreId=synthetic_import.datastore_id, searchCriteria={})
    assert {s["imageSetId"] for s in summaries} == {s["imageSetId"] for s in everything["imageSetsMetadataSummaries"]}
    assert len(summaries) >= 3 and calls.count("SearchImageSets") == len(summaries)  # one budgeted call per page
