"""Property-based bad input for every operation: a modelled 4xx, never a 5xx, never a changed store.

For each of the 18 operations a valid request is mutated in one place with a value the model
forbids (pattern, length, range, enum, missing member, two union members, path traversal,
unicode, huge values). Requests go through boto3 with client-side validation off, so the local
service alone decides.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from botocore import xform_name
from botocore.exceptions import ClientError
from botocore.model import Shape, StructureShape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ahi_torch.local import LocalAHI, ServiceSettings
from ahi_torch.local.service.protocol import service_model
from ahi_torch.sample.synthetic import SeriesSpec, write_series

pytestmark = pytest.mark.service  # runs a local AHI (or its processes) of its own

ROLE = "arn:aws:iam::123456789012:role/import"
NASTY = [
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "..\\..\\windows",
    "%00",
    "\x00",
    "",
    " ",
    "é漢字🙂",
    "' OR 1=1 --",
    "<script>",
    "A" * 3000,
    "s3://bucket/../../etc/passwd",
    "s3://Bucket/upper",
    "arn:aws:medical-imaging:us-east-1:123456789012:datastore/../../x",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fuzz")
    write_series(
        root / "dicom", SeriesSpec(patient_id="FUZZ", study_key="fz", series_key="fz", slices=2, rows=8, columns=8)
    )
    ahi = LocalAHI(root / "store", settings=ServiceSettings(transition_seconds=0.0, check_responses=True)).start()
    result = ahi.import_dicom(root / "dicom")
    client = ahi.client()
    datastore_id, image_set_id = result.datastore_id, result.image_set_ids[0]
    document = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
    frame_id = next(iter(next(iter(document["Study"]["Series"].values()))["Instances"].values()))["ImageFrames"][0][
        "ID"
    ]
    arn = client.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreArn"]
    client.tag_resource(resourceArn=arn, tags={"k": "v"})
    yield {
        "ahi": ahi,
        "client": ahi.boto3_client(parameter_validation=False, retries={"max_attempts": 1}),
        "D": datastore_id,
        "I": image_set_id,
        "F": frame_id,
        "J": result.job_id,
        "ARN": arn,
        "root": root,
    }
    ahi.stop()


def baselines(w: dict[str, Any]) -> dict[str, dict[str, Any]]:
    d, i = w["D"], w["I"]
    update = b'{"SchemaVersion":"1.1","Study":{"DICOM":{"StudyDescription":"fuzz"}}}'
    return {
        "CreateDatastore": {"datastoreName": "fuzz-ds", "clientToken": "fuzz-token"},
        "GetDatastore": {"datastoreId": d},
        "ListDatastores": {"maxResults": 5},
        "DeleteDatastore": {"datastoreId": d},
        "StartDICOMImportJob": {
            "datastoreId": d,
            "dataAccessRoleArn": ROLE,
            "inputS3Uri": "s3://fuzz-in/x/",
            "outputS3Uri": "s3://fuzz-out/y/",
            "clientToken": "fuzz-job",
        },
        "GetDICOMImportJob": {"datastoreId": d, "jobId": w["J"]},
        "ListDICOMImportJobs": {"datastoreId": d, "jobStatus": "COMPLETED"},
        "SearchImageSets": {
            "datastoreId": d,
            "searchCriteria": {"filters": [{"operator": "EQUAL", "values": [{"DICOMPatientId": "FUZZ"}]}]},
            "maxResults": 10,
        },
        "GetImageSet": {"datastoreId": d, "imageSetId": i},
        "GetImageSetMetadata": {"datastoreId": d, "imageSetId": i, "versionId": "1"},
        "GetImageFrame": {"datastoreId": d, "imageSetId": i, "imageFrameInformation": {"imageFrameId": w["F"]}},
        "ListImageSetVersions": {"datastoreId": d, "imageSetId": i},
        "UpdateImageSetMetadata": {
            "datastoreId": d,
            "imageSetId": i,
            "latestVersionId": "1",
            "updateImageSetMetadataUpdates": {"DICOMUpdates": {"updatableAttributes": update}},
        },
        "CopyImageSet": {
            "datastoreId": d,
            "sourceImageSetId": i,
            "copyImageSetInformation": {"sourceImageSet": {"latestVersionId": "1"}},
        },
        "DeleteImageSet": {"datastoreId": d, "imageSetId": i},
        "TagResource": {"resourceArn": w["ARN"], "tags": {"k2": "v"}},
        "UntagResource": {"resourceArn": w["ARN"], "tagKeys": ["k"]},
        "ListTagsForResource": {"resourceArn": w["ARN"]},
    }


def _member_paths(value: Any, shape: Shape, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Shape]]:
    """Every member present in a request, with its shape."""
    found: list[tuple[tuple[Any, ...], Shape]] = []
    if isinstance(shape, StructureShape) and isinstance(value, dict):
        if path:
            found.append((path, shape))
        for name, member in shape.members.items():
            if name in value:
                found += (
                    [((*path, name), member), *_member_paths(value[name], member, (*path, name))[1:]]
                    if member.type_name in ("structure", "list")
                    else [((*path, name), member)]
                )
    elif shape.type_name == "list" and isinstance(value, list):
        found.append((path, shape))
        for index, item in enumerate(value):
            found += _member_paths(item, shape.member, (*path, index))  # type: ignore[attr-defined]
    return found


def _invalid(shape: Shape) -> st.SearchStrategy[Any] | None:
    meta = shape.metadata
    kind = shape.type_name
    if kind == "string":
        pattern = meta.get("pattern")
        enum = shape.enum  # type: ignore[attr-defined]
        low, high = meta.get("min", 0), meta.get("max")
        compiled = re.compile(pattern.replace(r"\p{ASCII}", r"[\x00-\x7f]"), re.ASCII | re.DOTALL) if pattern else None

        def bad(value: str) -> bool:
            if enum and value not in enum:
                return True
            if compiled is not None and not compiled.fullmatch(value):
                return True
            if len(value) < low:
                return True
            if high is not None and len(value) > high:
                return True
            # path traversal in S3 keys: refused by the service
            return compiled is not None and value.startswith("s3://") and ".." in value

        options = st.sampled_from(NASTY) | st.text(max_size=60)
        if high is not None and high <= 5000:
            options = options | st.text(min_size=high + 1, max_size=high + 20)
        candidates = options.filter(bad)
        return candidates if (pattern or enum or low or high is not None) else None
    if kind in ("integer", "long"):
        parts = []
        if "min" in meta:
            parts.append(st.integers(max_value=meta["min"] - 1, min_value=-(2**31)))
        if "max" in meta:
            parts.append(st.integers(min_value=meta["max"] + 1, max_value=2**31 - 1))
        return st.one_of(parts) if parts else None
    if kind == "blob" and "max" in meta and meta["max"] <= 100_000:
        return st.binary(min_size=meta["max"] + 1, max_size=meta["max"] + 10)
    return None


def _set(request: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(request, default=lambda b: b.decode()))
    for key in ("updateImageSetMetadataUpdates",):
        if key in request:
            copy[key] = request[key]  # keep bytes
    target = copy
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return copy


_DELETE = object()
UNION_EXTRA = {
    "SearchByAttributeValue": ("DICOMStudyId", "1"),
    "MetadataUpdates": ("revertToVersionId", "1"),
}


def mutations(operation: str, w: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    request = baselines(w)[operation]
    shape = service_model().operation_model(operation).input_shape
    choices: list[st.SearchStrategy[dict[str, Any]]] = []
    for path, member in _member_paths(request, shape):
        invalid = _invalid(member)
        if invalid is not None:
            choices.append(invalid.map(lambda v, p=path: _set(request, p, v)))
        if isinstance(member, StructureShape) and member.metadata.get("union") and member.name in UNION_EXTRA:
            extra_name, extra_value = UNION_EXTRA[member.name]
            choices.append(st.just(_set(request, (*path, extra_name), extra_value)))
    for name in shape.required_members:
        member = shape.members[name]
        # botocore fills a missing idempotency token itself; URI labels cannot be left out.
        if (
            name in request
            and member.serialization.get("location") != "uri"
            and not member.metadata.get("idempotencyToken")
        ):
            choices.append(st.just(_set(request, (name,), _DELETE)))
    return st.one_of(choices)


def snapshot(ahi: LocalAHI) -> dict[str, Any]:
    db = ahi.store.connection()
    tables = ["datastores", "image_sets", "image_set_versions", "frames", "frame_refs", "import_jobs", "tags"]
    state: dict[str, Any] = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}
    state["versions"] = db.execute("SELECT SUM(latest_version), SUM(deleted) FROM image_sets").fetchone()[:]
    state["tags"] = sorted(db.execute("SELECT key, value FROM tags").fetchall())
    state["datastores_deleted"] = db.execute("SELECT SUM(deleted) FROM datastores").fetchone()[0]
    state["files"] = sum(1 for _ in Path(ahi.data_dir, "blobs").rglob("*"))
    return state


@pytest.mark.parametrize("operation", sorted(service_model().operation_names))
def test_bad_input_gets_a_modelled_4xx(world: dict[str, Any], operation: str) -> None:
    client, ahi = world["client"], world["ahi"]
    modelled = {e.name for e in service_model().operation_model(operation).error_shapes}
    method = getattr(client, xform_name(operation))
    before = snapshot(ahi)

    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
    )
    @given(request=mutations(operation, world))
    def check(request: dict[str, Any]) -> None:
        with pytest.raises(ClientError) as info:
            method(**request)
        error = info.value.response
        status = error["ResponseMetadata"]["HTTPStatusCode"]
        assert 400 <= status < 500, (operation, request, error["Error"])
        assert error["Error"]["Code"] in modelled, (operation, error["Error"])
        assert snapshot(ahi) == before, f"{operation} changed the store on bad input"

    check()
