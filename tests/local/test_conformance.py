"""Every AHI operation through plain boto3 against the local service: results, errors, state machines."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from ahi_torch.local import LocalAHI, Quotas, ServiceSettings
from ahi_torch.sample.synthetic import SeriesSpec, write_series

from ..conftest import wait_until

pytestmark = pytest.mark.service  # runs a local AHI (or its processes) of its own

SETTINGS = ServiceSettings(
    check_responses=True,
    transition_seconds=0.3,
    quotas=Quotas(max_datastores=6, max_frames_per_copy=4),
)
ROLE = "arn:aws:iam::123456789012:role/import"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conformance-store")


@pytest.fixture(scope="module")
def service(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with LocalAHI(data_dir, settings=SETTINGS) as ahi:
        yield ahi


@pytest.fixture(scope="module")
def mi(service: LocalAHI) -> Any:
    return service.boto3_client(retries={"max_attempts": 1})


@pytest.fixture(scope="module")
def unchecked(service: LocalAHI) -> Any:
    """A boto3 client that skips botocore's own checks, so the service's validation is what answers."""
    return service.boto3_client(retries={"max_attempts": 1}, parameter_validation=False)


@pytest.fixture(scope="module")
def loaded(service: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A data store with 7 image sets: 7 series of 3 patients, 2 slices each."""
    root = tmp_path_factory.mktemp("conformance-dicom")
    specs = []
    for index in range(7):
        patient = index % 3
        spec = SeriesSpec(
            patient_id=f"P{patient}",
            patient_name=f"Patient^{patient}",
            study_key=f"study-{patient}",
            series_key=f"series-{index}",
            series_number=index + 1,
            study_date=f"2024010{patient + 1}",
            study_time="093000",
            accession_number=f"A{patient}",
            slices=2,
            rows=16,
            columns=16,
        )
        write_series(root / spec.series_key, spec)
        specs.append(spec)
        time.sleep(0.002)
    result = service.import_dicom(root)
    assert result.status == "COMPLETED"
    assert len(result.image_set_ids) == 7
    by_series = {}
    for success in result.successes:
        key = success["inputFile"].split("/")[2]
        by_series[key] = success["importResponse"]["imageSetId"]
    return {"datastore_id": result.datastore_id, "specs": specs, "image_sets": by_series, "result": result}


def _metadata(mi: Any, datastore_id: str, image_set_id: str, version: str | None = None) -> dict:
    kwargs = {"versionId": version} if version else {}
    response = mi.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id, **kwargs)
    assert response["contentType"] == "application/json"
    assert response["contentEncoding"] == "gzip"
    raw = response["imageSetMetadataBlob"].read()
    assert raw[:2] == b"\x1f\x8b", "botocore must receive the metadata still gzipped"
    return json.loads(gzip.decompress(raw))


def _wait_active(mi: Any, datastore_id: str, image_set_id: str) -> None:
    wait_until(lambda: mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)["imageSetState"] == "ACTIVE")


# --- data stores -------------------------------------------------------------------------------


def test_a_datastore_still_creating_refuses_work(tmp_path: Path) -> None:
    """Until ACTIVE, reads, imports and deletes of a data store are ConflictException (never served early)."""
    with LocalAHI(tmp_path / "slow", settings=ServiceSettings(transition_seconds=120)) as slow:
        client = slow.boto3_client(retries={"max_attempts": 1})
        datastore_id = client.create_datastore(datastoreName="slow")["datastoreId"]
        assert client.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"] == "CREATING"
        with pytest.raises(client.exceptions.ConflictException, match="is CREATING, not ACTIVE"):
            client.search_image_sets(datastoreId=datastore_id)
        with pytest.raises(client.exceptions.ConflictException, match="still CREATING"):
            client.delete_datastore(datastoreId=datastore_id)


def test_datastore_lifecycle(mi: Any) -> None:
    created = mi.create_datastore(datastoreName="life-cycle", clientToken="token-1", tags={"team": "ml"})
    assert created["datastoreStatus"] == "CREATING"
    datastore_id = created["datastoreId"]
    assert re.fullmatch(r"[0-9a-z]{32}", datastore_id)
    again = mi.create_datastore(datastoreName="life-cycle", clientToken="token-1")
    assert again["datastoreId"] == datastore_id, "the same clientToken must not create a second data store"
    wait_until(lambda: mi.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"] == "ACTIVE")
    properties = mi.get_datastore(datastoreId=datastore_id)["datastoreProperties"]
    assert properties["datastoreName"] == "life-cycle"
    assert properties["losslessStorageFormat"] == "HTJ2K"
    assert properties["datastoreArn"] == f"arn:aws:medical-imaging:us-east-1:123456789012:datastore/{datastore_id}"
    assert isinstance(properties["createdAt"], dt.datetime)
    assert mi.list_tags_for_resource(resourceArn=properties["datastoreArn"])["tags"] == {"team": "ml"}
    deleting = mi.delete_datastore(datastoreId=datastore_id)
    assert deleting == {**deleting, "datastoreId": datastore_id, "datastoreStatus": "DELETING"}
    wait_until(
        lambda: mi.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"] == "DELETED"
    )
    deleted = mi.list_datastores(datastoreStatus="DELETED")["datastoreSummaries"]
    assert datastore_id in {d["datastoreId"] for d in deleted}


def test_list_datastores_paginates(mi: Any) -> None:
    made = [mi.create_datastore(datastoreName=f"page-{i}")["datastoreId"] for i in range(3)]
    first = mi.list_datastores(maxResults=2)
    assert len(first["datastoreSummaries"]) == 2 and "nextToken" in first
    seen = [
        d["datastoreId"]
        for page in mi.get_paginator("list_datastores").paginate(PaginationConfig={"PageSize": 2})
        for d in page["datastoreSummaries"]
    ]
    assert len(seen) == len(set(seen))
    assert set(made) <= set(seen)
    with pytest.raises(mi.exceptions.ValidationException, match="nextToken"):
        mi.list_datastores(nextToken="not-a-token")
    for datastore_id in made:
        wait_until(
            lambda d=datastore_id: mi.get_datastore(datastoreId=d)["datastoreProperties"]["datastoreStatus"] == "ACTIVE"
        )
        mi.delete_datastore(datastoreId=datastore_id)


def test_datastore_quota_is_402(mi: Any, loaded: dict) -> None:
    live = [d for d in mi.list_datastores()["datastoreSummaries"] if d["datastoreStatus"] in ("ACTIVE", "CREATING")]
    made = [mi.create_datastore(datastoreName=f"quota-{i}")["datastoreId"] for i in range(6 - len(live))]
    with pytest.raises(mi.exceptions.ServiceQuotaExceededException) as info:
        mi.create_datastore(datastoreName="one-too-many")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 402
    for datastore_id in made:
        wait_until(
            lambda d=datastore_id: mi.get_datastore(datastoreId=d)["datastoreProperties"]["datastoreStatus"] == "ACTIVE"
        )
        mi.delete_datastore(datastoreId=datastore_id)


def test_non_empty_datastore_cannot_be_deleted(mi: Any, loaded: dict) -> None:
    with pytest.raises(mi.exceptions.ConflictException, match="delete all image sets"):
        mi.delete_datastore(datastoreId=loaded["datastore_id"])


@pytest.mark.parametrize(
    ("call", "kwargs", "fragment"),
    [
        ("get_datastore", {"datastoreId": "NOT-VALID"}, "regular expression pattern: [0-9a-z]{32}"),
        ("list_datastores", {"maxResults": 51}, "less than or equal to 50"),
        ("list_datastores", {"datastoreStatus": "SLEEPING"}, "enum value set"),
        ("create_datastore", {"datastoreName": "x" * 257}, "length less than or equal to 256"),
        ("create_datastore", {"datastoreName": "bad name!"}, "regular expression pattern"),
        ("create_datastore", {"losslessStorageFormat": "PNG"}, "enum value set"),
        ("create_datastore", {"kmsKeyArn": "arn:aws:kms:nope"}, "regular expression pattern"),
        ("get_datastore", {"datastoreId": "../../../../etc/passwd"}, "regular expression pattern"),
    ],
)
def test_validation_errors(mi: Any, call: str, kwargs: dict, fragment: str) -> None:
    with pytest.raises(mi.exceptions.ValidationException) as info:
        getattr(mi, call)(**kwargs)
    assert fragment in info.value.response["Error"]["Message"]
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_not_found_errors(mi: Any, loaded: dict) -> None:
    missing = "0" * 32
    datastore_id = loaded["datastore_id"]
    image_set_id = next(iter(loaded["image_sets"].values()))
    calls = [
        lambda: mi.get_datastore(datastoreId=missing),
        lambda: mi.get_image_set(datastoreId=datastore_id, imageSetId=missing),
        lambda: mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id, versionId="99"),
        lambda: mi.get_image_set_metadata(datastoreId=datastore_id, imageSetId=missing),
        lambda: mi.get_image_frame(
            datastoreId=datastore_id, imageSetId=image_set_id, imageFrameInformation={"imageFrameId": missing}
        ),
        lambda: mi.get_dicom_import_job(datastoreId=datastore_id, jobId="0123abc"),
        lambda: mi.list_image_set_versions(datastoreId=datastore_id, imageSetId=missing),
        lambda: mi.search_image_sets(datastoreId=missing),
        lambda: mi.list_tags_for_resource(
            resourceArn=f"arn:aws:medical-imaging:us-east-1:123456789012:datastore/{missing}"
        ),
    ]
    for call in calls:
        with pytest.raises(mi.exceptions.ResourceNotFoundException):
            call()


# --- import jobs -------------------------------------------------------------------------------


def test_import_job_records_and_outputs(service: LocalAHI, mi: Any, loaded: dict) -> None:
    datastore_id = loaded["datastore_id"]
    result = loaded["result"]
    job = mi.get_dicom_import_job(datastoreId=datastore_id, jobId=result.job_id)["jobProperties"]
    assert job["jobStatus"] == "COMPLETED"
    assert job["outputS3Uri"].endswith(f"/{datastore_id}-DicomImport-{result.job_id}/")
    assert job["endedAt"] >= job["submittedAt"]
    summary = result.manifest["jobSummary"]
    assert summary["numberOfScannedFiles"] == 14
    assert summary["numberOfImportedFiles"] == 14
    assert summary["numberOfGeneratedImageSets"] == 7
    assert all(s["isPrimary"] and s["imageSetVersion"] == 1 for s in summary["imageSetsSummary"])
    jobs = list(mi.get_paginator("list_dicom_import_jobs").paginate(datastoreId=datastore_id, jobStatus="COMPLETED"))
    assert result.job_id in {j["jobId"] for page in jobs for j in page["jobSummaries"]}


def test_import_job_validation(mi: Any, loaded: dict) -> None:
    datastore_id = loaded["datastore_id"]
    with pytest.raises(mi.exceptions.ValidationException, match="pattern"):
        mi.start_dicom_import_job(
            datastoreId=datastore_id, dataAccessRoleArn=ROLE, inputS3Uri="http://x/y", outputS3Uri="s3://out-bucket/"
        )
    with pytest.raises(mi.exceptions.ValidationException, match="pattern"):
        mi.start_dicom_import_job(
            datastoreId=datastore_id,
            dataAccessRoleArn="arn:aws:iam::12:user/someone",
            inputS3Uri="s3://in-bucket/",
            outputS3Uri="s3://out-bucket/",
        )


def test_import_from_missing_bucket_fails_the_job(mi: Any, loaded: dict) -> None:
    datastore_id = loaded["datastore_id"]
    job = mi.start_dicom_import_job(
        datastoreId=datastore_id,
        dataAccessRoleArn=ROLE,
        inputS3Uri="s3://no-such-bucket/in/",
        outputS3Uri="s3://no-such-bucket/out/",
    )
    wait_until(
        lambda: (
            mi.get_dicom_import_job(datastoreId=datastore_id, jobId=job["jobId"])["jobProperties"]["jobStatus"]
            == "FAILED"
        )
    )
    message = mi.get_dicom_import_job(datastoreId=datastore_id, jobId=job["jobId"])["jobProperties"]["message"]
    assert message.startswith("INPUT_S3_ACCESS_FAILED")


# --- search ------------------------------------------------------------------------------------


def _search_ids(mi: Any, datastore_id: str, criteria: dict, page_size: int = 2) -> list[str]:
    pages = mi.get_paginator("search_image_sets").paginate(
        datastoreId=datastore_id, searchCriteria=criteria, PaginationConfig={"PageSize": page_size}
    )
    return [s["imageSetId"] for page in pages for s in page["imageSetsMetadataSummaries"]]


def test_search_pages_through_everything(mi: Any, loaded: dict) -> None:
    datastore_id = loaded["datastore_id"]
    first = mi.search_image_sets(datastoreId=datastore_id, maxResults=3)
    assert len(first["imageSetsMetadataSummaries"]) == 3 and first["nextToken"]
    ids = _search_ids(mi, datastore_id, {}, page_size=3)
    assert sorted(ids) == sorted(loaded["image_sets"].values())
    summary = first["imageSetsMetadataSummaries"][0]
    assert summary["version"] == 1 and summary["isPrimary"] is True
    tags = summary["DICOMTags"]
    assert tags["DICOMPatientId"].startswith("P")
    assert isinstance(tags["DICOMSeriesNumber"], int)
    assert tags["DICOMNumberOfStudyRelatedInstances"] >= 2
    updated = [s["updatedAt"] for s in mi.search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"]]
    assert updated == sorted(updated, reverse=True), "default order is updatedAt, newest first"


def test_search_filters(mi: Any, loaded: dict) -> None:
    datastore_id = loaded["datastore_id"]
    specs = loaded["specs"]
    sets = loaded["image_sets"]
    by_patient = _search_ids(
        mi, datastore_id, {"filters": [{"operator": "EQUAL", "values": [{"DICOMPatientId": "P1"}]}]}
    )
    assert sorted(by_patient) == sorted(sets[s.series_key] for s in specs if s.patient_id == "P1")
    spec = specs[4]
    by_series = _search_ids(
        mi, datastore_id, {"filters": [{"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": spec.series_uid}]}]}
    )
    assert by_series == [sets[spec.series_key]]
    by_study = _search_ids(
        mi,
        datastore_id,
        {"filters": [{"operator": "EQUAL", "values": [{"DICOMStudyInstanceUID": specs[0].study_uid}]}]},
    )
    assert sorted(by_study) == sorted(sets[s.series_key] for s in specs if s.study_uid == specs[0].study_uid)
    by_accession = _search_ids(
        mi, datastore_id, {"filters": [{"operator": "EQUAL", "values": [{"DICOMAccessionNumber": "A2"}]}]}
    )
    assert sorted(by_accession) == sorted(sets[s.series_key] for s in specs if s.accession_number == "A2")
    dates = {
        "filters": [
            {
                "operator": "BETWEEN",
                "values": [
                    {"DICOMStudyDateAndTime": {"DICOMStudyDate": "20240102"}},
                    {"DICOMStudyDateAndTime": {"DICOMStudyDate": "20240103", "DICOMStudyTime": "000000"}},
                ],
            }
        ],
        "sort": {"sortField": "DICOMStudyDateAndTime", "sortOrder": "ASC"},
    }
    by_date = _search_ids(mi, datastore_id, dates)
    assert sorted(by_date) == sorted(sets[s.series_key] for s in specs if s.study_date == "20240102")
    now = dt.datetime.now(dt.timezone.utc)
    window = {
        "filters": [
            {
                "operator": "BETWEEN",
                "values": [{"updatedAt": now - dt.timedelta(hours=1)}, {"updatedAt": now + dt.timedelta(hours=1)}],
            },
            {"operator": "EQUAL", "values": [{"isPrimary": True}]},
        ],
        "sort": {"sortField": "createdAt", "sortOrder": "ASC"},
    }
    assert len(_search_ids(mi, datastore_id, window)) >= 7
    past = {
        "filters": [
            {
                "operator": "BETWEEN",
                "values": [{"createdAt": dt.datetime(2000, 1, 1)}, {"createdAt": dt.datetime(2001, 1, 1)}],
            }
        ]
    }
    assert _search_ids(mi, datastore_id, past) == []


@pytest.mark.parametrize(
    ("criteria", "fragment"),
    [
        (
            {"filters": [{"operator": "EQUAL", "values": [{"DICOMPatientId": "P1", "DICOMStudyId": "1"}]}]},
            "exactly one",
        ),
        ({"filters": [{"operator": "EQUAL", "values": [{"createdAt": dt.datetime(2024, 1, 1)}]}]}, "BETWEEN"),
        (
            {"filters": [{"operator": "BETWEEN", "values": [{"DICOMPatientId": "P1"}, {"DICOMPatientId": "P2"}]}]},
            "BETWEEN is not supported",
        ),
        ({"filters": [{"operator": "LIKE", "values": [{"DICOMPatientId": "P1"}]}]}, "enum value set"),
        (
            {"filters": [{"operator": "EQUAL", "values": [{"DICOMPatientId": "P"}]}] * 3},
            "length less than or equal to 2",
        ),
        ({"sort": {"sortField": "patientName", "sortOrder": "ASC"}}, "enum value set"),
    ],
)
def test_search_rejects_bad_criteria(unchecked: Any, loaded: dict, criteria: dict, fragment: str) -> None:
    with pytest.raises(unchecked.exceptions.ValidationException) as info:
        unchecked.search_image_sets(datastoreId=loaded["datastore_id"], searchCriteria=criteria)
    assert fragment in info.value.response["Error"]["Message"]


# --- versions, updates, copies, deletes ----------------------------------------------------------


def _update(mi: Any, datastore_id, image_set_id, version, updatable=None, removable=None, force=None):  # type: ignore[no-untyped-def]
    updates = {}
    if updatable is not None:
        updates["updatableAttributes"] = json.dumps({"SchemaVersion": 1.1, **updatable}).encode()
    if removable is not None:
        updates["removableAttributes"] = json.dumps({"SchemaVersion": 1.1, **removable}).encode()
    kwargs = {"force": force} if force is not None else {}
    return mi.update_image_set_metadata(
        datastoreId=datastore_id,
        imageSetId=image_set_id,
        latestVersionId=version,
        updateImageSetMetadataUpdates={"DICOMUpdates": updates},
        **kwargs,
    )


def test_update_versions_and_revert(mi: Any, loaded: dict) -> None:
    datastore_id = loaded["datastore_id"]
    image_set_id = loaded["image_sets"]["series-0"]
    original = _metadata(mi, datastore_id, image_set_id)
    response = _update(
        mi, datastore_id, image_set_id, "1", updatable={"Patient": {"DICOM": {"PatientName": "Renamed^Patient"}}}
    )
    assert response["latestVersionId"] == "2"
    assert (response["imageSetState"], response["imageSetWorkflowStatus"]) == ("LOCKED", "UPDATING")
    with pytest.raises(mi.exceptions.ConflictException, match="LOCKED"):
        _update(mi, datastore_id, image_set_id, "2", updatable={"Study": {"DICOM": {"StudyDescription": "too soon"}}})
    _wait_active(mi, datastore_id, image_set_id)
    assert mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)["imageSetWorkflowStatus"] == "UPDATED"
    assert _metadata(mi, datastore_id, image_set_id)["Patient"]["DICOM"]["PatientName"] == "Renamed^Patient"
    assert _metadata(mi, datastore_id, image_set_id, "1")["Patient"]["DICOM"] == original["Patient"]["DICOM"]
    with pytest.raises(mi.exceptions.ConflictException, match="latestVersionId"):
        _update(mi, datastore_id, image_set_id, "1", updatable={"Study": {"DICOM": {"StudyDescription": "stale"}}})
    _update(mi, datastore_id, image_set_id, "2", removable={"Study": {"DICOM": {"StudyDescription": ""}}})
    _wait_active(mi, datastore_id, image_set_id)
    assert "StudyDescription" not in _metadata(mi, datastore_id, image_set_id)["Study"]["DICOM"]
    reverted = mi.update_image_set_metadata(
        datastoreId=datastore_id,
        imageSetId=image_set_id,
        latestVersionId="3",
        updateImageSetMetadataUpdates={"revertToVersionId": "1"},
    )
    assert reverted["latestVersionId"] == "4"
    _wait_active(mi, datastore_id, image_set_id)
    assert _metadata(mi, datastore_id, image_set_id)["Patient"] == original["Patient"]
    versions = mi.list_image_set_versions(datastoreId=datastore_id, imageSetId=image_set_id, maxResults=3)
    listed = versions["imageSetPropertiesList"]
    assert [v["versionId"] for v in listed] == ["4", "3", "2"] and versions["nextToken"]
    assert listed[0]["ImageSetWorkflowStatus"] == "UPDATED", "ListImageSetVersions uses the capitalised key"
    rest = mi.list_image_set_versions(
        datastoreId=datastore_id, imageSetId=image_set_id, nextToken=versions["nextToken"]
    )
    assert [v["versionId"] for v in rest["imageSetPropertiesList"]] == ["1"]
    assert rest["imageSetPropertiesList"][0]["ImageSetWorkflowStatus"] == "CREATED"
    created = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id, versionId="2")["createdAt"]
    every = listed + rest["imageSetPropertiesList"]
    assert {v["createdAt"] for v in every} == {created}, "every version shows the image set's creation time"
    assert len({v["updatedAt"] for v in every}) > 1, "while each keeps its own update time"
    summary = next(
        s
        for s in mi.search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"]
        if s["imageSetId"] == image_set_id
    )
    assert summary["version"] == 4


@pytest.mark.parametrize(
    ("updatable", "fragment"),
    [
        ({"Study": {"DICOM": {"PatientName": "X^Y"}}}, "Patient-level attribute"),
        ({"Study": {"DICOM": {"StudyInstanceUID": "1.2.3"}}}, "force=true"),
        ({"Study": {"DICOM": {"StudyDate": "yesterday"}}}, "not compatible with its VR DA"),
        ({"Study": {"Series": {"9.9.9": {"DICOM": {"SeriesDescription": "x"}}}}}, "does not exist"),
        ({"Patient": {"DICOM": {"NotAnAttribute": "x"}}}, "not a DICOM attribute"),
        ({"Patient": {"DICOM": {"MaxPixelValue": 1}}}, "generated by HealthImaging"),
    ],
)
def test_update_constraints_fail_on_a_new_version(mi: Any, loaded: dict, updatable: dict, fragment: str) -> None:
    """As AHI: the request is accepted, and the new version records UPDATE_FAILED with the reason."""
    datastore_id = loaded["datastore_id"]
    image_set_id = loaded["image_sets"]["series-1"]
    latest = _latest(mi, datastore_id, image_set_id)
    before = _metadata(mi, datastore_id, image_set_id)
    response = _update(mi, datastore_id, image_set_id, latest, updatable=updatable)
    assert response["latestVersionId"] == str(int(latest) + 1)
    _wait_active(mi, datastore_id, image_set_id)
    failed = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
    # Messages keep to the model's pattern ([\w -:`]+): "force=true" reads "force true".
    fragment = fragment.replace("=", " ")
    assert failed["imageSetWorkflowStatus"] == "UPDATE_FAILED" and fragment in failed["message"]
    listed = mi.list_image_set_versions(datastoreId=datastore_id, imageSetId=image_set_id)["imageSetPropertiesList"]
    assert (listed[0]["versionId"], listed[0]["ImageSetWorkflowStatus"]) == (
        response["latestVersionId"],
        "UPDATE_FAILED",
    )
    assert fragment in listed[0]["message"]
    after = _metadata(mi, datastore_id, image_set_id)
    assert (after["Patient"], after["Study"]) == (before["Patient"], before["Study"]), "the metadata is unchanged"


def _latest(mi: Any, datastore_id: str, image_set_id: str) -> str:
    _wait_active(mi, datastore_id, image_set_id)
    return str(mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)["versionId"])


def test_update_union_and_quota(mi: Any, unchecked: Any, loaded: dict) -> None:
    datastore_id = loaded["datastore_id"]
    image_set_id = loaded["image_sets"]["series-1"]
    latest = _latest(mi, datastore_id, image_set_id)
    with pytest.raises(unchecked.exceptions.ValidationException, match="exactly one"):
        unchecked.update_image_set_metadata(
            datastoreId=datastore_id,
            imageSetId=image_set_id,
            latestVersionId=latest,
            updateImageSetMetadataUpdates={"revertToVersionId": "1", "DICOMUpdates": {"updatableAttributes": b"{}"}},
        )
    big = {"Study": {"DICOM": {"StudyDescription": "x" * 12000}}}
    with pytest.raises(mi.exceptions.ServiceQuotaExceededException):
        _update(mi, datastore_id, image_set_id, latest, updatable=big)


def test_forced_update_records_override(mi: Any, loaded: dict) -> None:
    datastore_id = loaded["datastore_id"]
    image_set_id = loaded["image_sets"]["series-2"]
    document = _metadata(mi, datastore_id, image_set_id)
    series_uid, series = next(iter(document["Study"]["Series"].items()))
    sop_uid = next(iter(series["Instances"]))
    private = {
        "Study": {
            "Series": {
                series_uid: {"Instances": {sop_uid: {"DICOM": {"001910F9": "97"}, "DICOMVRs": {"001910F9": "DS"}}}}
            }
        }
    }
    _update(mi, datastore_id, image_set_id, "1", updatable=private)
    _wait_active(mi, datastore_id, image_set_id)
    refused = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
    assert refused["imageSetWorkflowStatus"] == "UPDATE_FAILED" and "force" in refused["message"]
    _update(mi, datastore_id, image_set_id, "2", updatable=private, force=True)
    _wait_active(mi, datastore_id, image_set_id)
    assert mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)["overrides"] == {"forced": True}
    instance = _metadata(mi, datastore_id, image_set_id)["Study"]["Series"][series_uid]["Instances"][sop_uid]
    assert instance["DICOM"]["001910F9"] == "97" and instance["DICOMVRs"]["001910F9"] == "DS"


def test_copy_to_new_and_existing_image_sets(mi: Any, loaded: dict) -> None:
    datastore_id = loaded["datastore_id"]
    source_id = loaded["image_sets"]["series-3"]
    document = _metadata(mi, datastore_id, source_id)
    series_uid, series = next(iter(document["Study"]["Series"].items()))
    first_sop, second_sop = sorted(series["Instances"])
    selection = json.dumps({"SchemaVersion": "1.1", "Study": {"Series": {series_uid: {"Instances": {first_sop: {}}}}}})
    before = mi.get_image_set(datastoreId=datastore_id, imageSetId=source_id)
    copied = mi.copy_image_set(
        datastoreId=datastore_id,
        sourceImageSetId=source_id,
        copyImageSetInformation={
            "sourceImageSet": {"latestVersionId": "1", "DICOMCopies": {"copiableAttributes": selection}}
        },
    )
    source_props = copied["sourceImageSetProperties"]
    destination = copied["destinationImageSetProperties"]
    # The source's updatedAt is the copy's time (within the call: the copy's own createdAt is taken a moment later).
    assert abs((source_props["updatedAt"] - destination["createdAt"]).total_seconds()) < 1
    assert source_props["updatedAt"] > before["updatedAt"]
    assert (source_props["imageSetState"], source_props["imageSetWorkflowStatus"]) == (
        "LOCKED",
        "COPYING_WITH_READ_ONLY_ACCESS",
    )
    assert (destination["imageSetState"], destination["imageSetWorkflowStatus"]) == ("LOCKED", "COPYING")
    assert destination["latestVersionId"] == "1"
    new_id = destination["imageSetId"]
    _wait_active(mi, datastore_id, new_id)
    copy_props = mi.get_image_set(datastoreId=datastore_id, imageSetId=new_id)
    assert copy_props["isPrimary"] is False and copy_props["imageSetWorkflowStatus"] == "COPIED"
    copy_doc = _metadata(mi, datastore_id, new_id)
    assert list(copy_doc["Study"]["Series"][series_uid]["Instances"]) == [first_sop]
    frame_id = copy_doc["Study"]["Series"][series_uid]["Instances"][first_sop]["ImageFrames"][0]["ID"]
    original_frame = mi.get_image_frame(
        datastoreId=datastore_id, imageSetId=source_id, imageFrameInformation={"imageFrameId": frame_id}
    )
    copied_frame = mi.get_image_frame(
        datastoreId=datastore_id, imageSetId=new_id, imageFrameInformation={"imageFrameId": frame_id}
    )
    assert copied_frame["imageFrameBlob"].read() == original_frame["imageFrameBlob"].read()
    _wait_active(mi, datastore_id, source_id)
    rest = json.dumps({"SchemaVersion": "1.1", "Study": {"Series": {series_uid: {"Instances": {second_sop: {}}}}}})
    merged = mi.copy_image_set(
        datastoreId=datastore_id,
        sourceImageSetId=source_id,
        copyImageSetInformation={
            "sourceImageSet": {"latestVersionId": "1", "DICOMCopies": {"copiableAttributes": rest}},
            "destinationImageSet": {"imageSetId": new_id, "latestVersionId": "1"},
        },
    )
    assert merged["destinationImageSetProperties"]["latestVersionId"] == "2"
    _wait_active(mi, datastore_id, new_id)
    assert sorted(_metadata(mi, datastore_id, new_id)["Study"]["Series"][series_uid]["Instances"]) == [
        first_sop,
        second_sop,
    ]
    other = loaded["image_sets"]["series-4"]
    _wait_active(mi, datastore_id, source_id)
    mismatched = mi.copy_image_set(
        datastoreId=datastore_id,
        sourceImageSetId=other,
        copyImageSetInformation={
            "sourceImageSet": {"latestVersionId": "1"},
            "destinationImageSet": {"imageSetId": new_id, "latestVersionId": "2"},
        },
    )
    assert mismatched["destinationImageSetProperties"]["latestVersionId"] == "3", "accepted, as AHI does"
    _wait_active(mi, datastore_id, new_id)
    failed = mi.list_image_set_versions(datastoreId=datastore_id, imageSetId=new_id)["imageSetPropertiesList"][0]
    assert (failed["versionId"], failed["ImageSetWorkflowStatus"]) == ("3", "COPY_FAILED")
    assert failed["message"] == "INVALID_REQUEST: Series of SourceImageSet and DestinationImageSet don't match."
    assert sorted(_metadata(mi, datastore_id, new_id)["Study"]["Series"][series_uid]["Instances"]) == [
        first_sop,
        second_sop,
    ], "a failed copy leaves the destination's metadata as it was"
    with pytest.raises(mi.exceptions.ConflictException, match="already has a primary"):
        mi.copy_image_set(
            datastoreId=datastore_id,
            sourceImageSetId=source_id,
            copyImageSetInformation={"sourceImageSet": {"latestVersionId": "1"}},
            promoteToPrimary=True,
        )
    with pytest.raises(mi.exceptions.ConflictException, match="latestVersionId"):
        mi.copy_image_set(
            datastoreId=datastore_id,
            sourceImageSetId=source_id,
            copyImageSetInformation={"sourceImageSet": {"latestVersionId": "7"}},
        )


def test_a_copy_naming_what_the_source_lacks_fails_as_an_update_does(mi: Any, loaded: dict) -> None:
    """Issue 25.5: accepted, then COPY_FAILED with the reason (as UPDATE_FAILED); malformed JSON is refused at once."""
    datastore_id = loaded["datastore_id"]
    source_id, destination_id = loaded["image_sets"]["series-5"], loaded["image_sets"]["series-2"]
    absent = json.dumps({"SchemaVersion": "1.1", "Study": {"Series": {"1.2.3.999": {}}}})

    def information(copiable: str) -> dict:
        _wait_active(mi, datastore_id, source_id)
        version = mi.get_image_set(datastoreId=datastore_id, imageSetId=source_id)["versionId"]
        return {"sourceImageSet": {"latestVersionId": version, "DICOMCopies": {"copiableAttributes": copiable}}}

    new_id = mi.copy_image_set(
        datastoreId=datastore_id, sourceImageSetId=source_id, copyImageSetInformation=information(absent)
    )["destinationImageSetProperties"]["imageSetId"]
    _wait_active(mi, datastore_id, new_id)
    created = mi.get_image_set(datastoreId=datastore_id, imageSetId=new_id)
    assert created["imageSetWorkflowStatus"] == "COPY_FAILED" and "1.2.3.999" in created["message"]
    assert _metadata(mi, datastore_id, new_id)["Study"]["Series"] == {}, "the answered image set exists, empty"

    _wait_active(mi, datastore_id, destination_id)
    before = mi.get_image_set(datastoreId=datastore_id, imageSetId=destination_id)["versionId"]
    document = _metadata(mi, datastore_id, destination_id)
    into = {**information(absent), "destinationImageSet": {"imageSetId": destination_id, "latestVersionId": before}}
    answered = mi.copy_image_set(datastoreId=datastore_id, sourceImageSetId=source_id, copyImageSetInformation=into)
    assert answered["destinationImageSetProperties"]["latestVersionId"] == str(int(before) + 1), "accepted"
    _wait_active(mi, datastore_id, destination_id)
    failed = mi.get_image_set(datastoreId=datastore_id, imageSetId=destination_id)
    assert failed["imageSetWorkflowStatus"] == "COPY_FAILED"
    assert failed["message"] == "INVALID_REQUEST: Series 1.2.3.999 does not exist in the SourceImageSet"
    assert _metadata(mi, datastore_id, destination_id) == document, "the destination's metadata as it was"

    # One step aside: an instance the series lacks, promoted to primary: failed the same way, never primary.
    series_uid = next(iter(_metadata(mi, datastore_id, source_id)["Study"]["Series"]))
    lacking = json.dumps({"SchemaVersion": "1.1", "Study": {"Series": {series_uid: {"Instances": {"9.9.9": {}}}}}})
    promoted = mi.copy_image_set(
        datastoreId=datastore_id,
        sourceImageSetId=source_id,
        copyImageSetInformation=information(lacking),
        promoteToPrimary=True,
    )["destinationImageSetProperties"]["imageSetId"]
    _wait_active(mi, datastore_id, promoted)
    failed_new = mi.get_image_set(datastoreId=datastore_id, imageSetId=promoted)
    assert failed_new["imageSetWorkflowStatus"] == "COPY_FAILED"
    assert failed_new["message"] == f"INVALID_REQUEST: Instance 9.9.9 does not exist in series {series_uid}"
    assert failed_new["isPrimary"] is False, "a failed copy is never promoted"

    with pytest.raises(mi.exceptions.ValidationException, match="not valid JSON"):
        mi.copy_image_set(
            datastoreId=datastore_id, sourceImageSetId=source_id, copyImageSetInformation=information("{not json")
        )


def test_copy_frame_quota_is_402(mi: Any, loaded: dict, service: LocalAHI, tmp_path: Path) -> None:
    spec = SeriesSpec(patient_id="BIG", study_key="big", series_key="big", slices=5, rows=8, columns=8)
    write_series(tmp_path / "big", spec)
    result = service.import_dicom(tmp_path / "big", datastore_id=loaded["datastore_id"])
    with pytest.raises(mi.exceptions.ServiceQuotaExceededException, match="at most 4 image frames"):
        mi.copy_image_set(
            datastoreId=loaded["datastore_id"],
            sourceImageSetId=result.image_set_ids[0],
            copyImageSetInformation={"sourceImageSet": {"latestVersionId": "1"}},
        )


def test_delete_image_set(mi: Any, loaded: dict) -> None:
    datastore_id = loaded["datastore_id"]
    image_set_id = loaded["image_sets"]["series-5"]
    response = mi.delete_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
    assert (response["imageSetState"], response["imageSetWorkflowStatus"]) == ("LOCKED", "DELETING")
    with pytest.raises(mi.exceptions.ConflictException):
        _update(mi, datastore_id, image_set_id, "1", updatable={"Study": {"DICOM": {"StudyDescription": "gone"}}})
    wait_until(
        lambda: mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)["imageSetState"] == "DELETED"
    )
    properties = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
    assert properties["imageSetWorkflowStatus"] == "DELETED" and "deletedAt" in properties
    with pytest.raises(mi.exceptions.ResourceNotFoundException):
        mi.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
    assert image_set_id not in _search_ids(mi, datastore_id, {}, page_size=50)


# --- tags --------------------------------------------------------------------------------------


def test_tags_on_image_sets(mi: Any, loaded: dict) -> None:
    datastore_id = loaded["datastore_id"]
    image_set_id = loaded["image_sets"]["series-6"]
    arn = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)["imageSetArn"]
    assert arn.endswith(f"datastore/{datastore_id}/imageset/{image_set_id}")
    mi.tag_resource(resourceArn=arn, tags={"split": "train", "reader": "r1"})
    mi.tag_resource(resourceArn=arn, tags={"split": "val"})
    assert mi.list_tags_for_resource(resourceArn=arn)["tags"] == {"split": "val", "reader": "r1"}
    mi.untag_resource(resourceArn=arn, tagKeys=["reader"])
    assert mi.list_tags_for_resource(resourceArn=arn)["tags"] == {"split": "val"}
    with pytest.raises(mi.exceptions.ValidationException, match="pattern"):
        mi.tag_resource(resourceArn=arn, tags={"aws:reserved": "x"})
    with pytest.raises(mi.exceptions.ValidationException, match="pattern"):
        mi.list_tags_for_resource(resourceArn="arn:aws:s3:::bucket")


# --- wire details ------------------------------------------------------------------------------


def test_runtime_host_prefix_and_raw_http(service: LocalAHI, loaded) -> None:
    """Data-plane calls arrive with Host runtime-...; malformed bodies get restJson1 errors."""
    url = f"{service.endpoint_url}/datastore/{loaded['datastore_id']}/searchImageSets?maxResults=1"
    request = urllib.request.Request(
        url, data=b"{}", method="POST", headers={"Host": "runtime-medical-imaging.us-east-1.amazonaws.com"}
    )
    with urllib.request.urlopen(request) as response:
        assert len(json.loads(response.read())["imageSetsMetadataSummaries"]) == 1
    broken = urllib.request.Request(url, data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(broken)
    assert info.value.code == 400
    assert info.value.headers["x-amzn-ErrorType"] == "SerializationException"
    unknown = urllib.request.Request(f"{service.endpoint_url}/nothing/here", method="GET")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(unknown)
    assert info.value.code == 404


def test_host_prefix_injection_needs_disabling(service: LocalAHI, loaded) -> None:
    """With prefix injection on, botocore sends data-plane calls to runtime-<host>, which does not resolve."""
    from botocore.exceptions import EndpointConnectionError

    injecting = boto3.session.Session().client(
        "medical-imaging",
        endpoint_url=service.endpoint_url.replace("127.0.0.1", "localhost"),
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"max_attempts": 1}),
    )
    assert (
        injecting.get_datastore(datastoreId=loaded["datastore_id"])["datastoreProperties"]["datastoreStatus"]
        == "ACTIVE"
    )
    with pytest.raises(EndpointConnectionError, match="runtime-localhost"):
        injecting.search_image_sets(datastoreId=loaded["datastore_id"])


# --- persistence (last: it restarts the module's service) ----------------------------------------


def test_restart_keeps_everything(service: LocalAHI, mi: Any, loaded: dict, data_dir: Path) -> None:
    datastore_id = loaded["datastore_id"]
    before_sets = sorted(_search_ids(mi, datastore_id, {}, page_size=50))
    image_set_id = loaded["image_sets"]["series-0"]
    before_versions = mi.list_image_set_versions(datastoreId=datastore_id, imageSetId=image_set_id)[
        "imageSetPropertiesList"
    ]
    document = _metadata(mi, datastore_id, image_set_id)
    frame_id = next(iter(next(iter(document["Study"]["Series"].values()))["Instances"].values()))["ImageFrames"][0][
        "ID"
    ]
    frame = mi.get_image_frame(
        datastoreId=datastore_id, imageSetId=image_set_id, imageFrameInformation={"imageFrameId": frame_id}
    )["imageFrameBlob"].read()
    arn = mi.get_image_set(datastoreId=datastore_id, imageSetId=loaded["image_sets"]["series-6"])["imageSetArn"]
    mi.tag_resource(resourceArn=arn, tags={"split": "val"})
    jobs = [j["jobId"] for j in mi.list_dicom_import_jobs(datastoreId=datastore_id)["jobSummaries"]]
    service.stop()
    with LocalAHI(data_dir, settings=SETTINGS) as restarted:
        again = restarted.boto3_client()
        assert sorted(_search_ids(again, datastore_id, {}, page_size=50)) == before_sets
        after_versions = again.list_image_set_versions(datastoreId=datastore_id, imageSetId=image_set_id)[
            "imageSetPropertiesList"
        ]
        assert [v["versionId"] for v in after_versions] == [v["versionId"] for v in before_versions]
        assert _metadata(again, datastore_id, image_set_id) == document
        reread = again.get_image_frame(
            datastoreId=datastore_id, imageSetId=image_set_id, imageFrameInformation={"imageFrameId": frame_id}
        )
        assert reread["imageFrameBlob"].read() == frame
        assert again.list_tags_for_resource(resourceArn=arn)["tags"] == {"split": "val"}
        assert [j["jobId"] for j in again.list_dicom_import_jobs(datastoreId=datastore_id)["jobSummaries"]] == jobs
