"""StartDICOMImportJob on synthetic and real DICOM: every frame decodes to pydicom's pixels, CRCs match."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from pydicom.pixels import pixel_array

from ahi_torch.codecs import decode_frame, pixel_crc32
from ahi_torch.codecs.color import to_rgb
from ahi_torch.local import LocalAHI
from ahi_torch.local.imports.transcode import KEPT_AS_IMPORTED
from ahi_torch.metadata import PixelDescription
from ahi_torch.sample.synthetic import SeriesSpec, write_series

from ..conftest import REAL_FILES, ImportedData

pytestmark = pytest.mark.service  # runs a local AHI (or its processes) of its own


def _document(mi, datastore_id: str, image_set_id: str) -> dict:  # type: ignore[no-untyped-def]
    blob = mi.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)["imageSetMetadataBlob"]
    return json.loads(gzip.decompress(blob.read()))


def _reference(ds) -> np.ndarray:  # type: ignore[no-untyped-def]
    """pydicom's pixels, one leading axis per frame; JPEG decoded by libjpeg-turbo as AHI clients do."""
    syntax = str(ds.file_meta.TransferSyntaxUID)
    plugin = "pillow" if syntax == "1.2.840.10008.1.2.4.50" else ""
    pixels = pixel_array(ds, decoding_plugin=plugin)
    pixels = pixels.astype(pixels.dtype.newbyteorder("="))  # big-endian sources decode as '>u2'
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return pixels if frames > 1 else pixels[None]


def _check_every_frame(ahi: LocalAHI, data: ImportedData) -> dict[str, str]:
    """Fetch and decode every frame of every imported file; returns file → stored transfer syntax."""
    mi = ahi.boto3_client()
    stored = {}
    for success in data.result.successes:
        ds = data.source(success["inputFile"])
        image_set_id = success["importResponse"]["imageSetId"]
        document = _document(mi, data.datastore_id, image_set_id)
        instance = document["Study"]["Series"][ds.SeriesInstanceUID]["Instances"][ds.SOPInstanceUID]
        pixel = PixelDescription.from_dicom(instance["DICOM"])
        assert pixel is not None
        reference = _reference(ds)
        assert len(instance["ImageFrames"]) == len(reference)
        for number, (frame, expected) in enumerate(zip(instance["ImageFrames"], reference, strict=True), start=1):
            response = mi.get_image_frame(
                datastoreId=data.datastore_id,
                imageSetId=image_set_id,
                imageFrameInformation={"imageFrameId": frame["ID"]},
            )
            data_bytes = response["imageFrameBlob"].read()
            decoded = decode_frame(data_bytes, content_type=response["contentType"], pixel=pixel)
            full = frame["PixelDataChecksumFromBaseToFullResolution"][-1]
            assert (full["Width"], full["Height"]) == (decoded.shape[1], decoded.shape[0])
            assert pixel_crc32(decoded) == full["Checksum"], f"{success['inputFile']} frame {number}: CRC"
            if instance["StoredTransferSyntaxUID"] in KEPT_AS_IMPORTED:
                # Kept in the original (possibly lossy) syntax: no min/max, the original frame's size.
                assert frame["MinPixelValue"] is None and frame["MaxPixelValue"] is None, "null, as AHI writes them"
                assert frame["FrameSizeInBytes"] == len(data_bytes) < decoded.nbytes
            else:
                assert frame["MinPixelValue"] == int(decoded.min()) and frame["MaxPixelValue"] == int(decoded.max())
                assert frame["FrameSizeInBytes"] == pixel.frame_bytes
            shown = to_rgb(decoded, pixel.photometric_interpretation, instance["StoredTransferSyntaxUID"])
            assert shown.dtype == expected.dtype, success["inputFile"]
            np.testing.assert_array_equal(shown, expected, err_msg=f"{success['inputFile']} frame {number}")
        stored[success["inputFile"].rsplit("/", 1)[-1]] = instance["StoredTransferSyntaxUID"]
    return stored


def test_synthetic_series_multiframe_and_rgb(ahi: LocalAHI, synthetic_import: ImportedData) -> None:
    result = synthetic_import.result
    assert len(result.successes) == 24 + 1 + 1
    assert [f["inputFile"].rsplit("/", 1)[-1] for f in result.failures] == ["notes.txt"]
    assert result.failures[0]["exception"]["exceptionType"] == "ValidationException"
    assert result.manifest["jobSummary"]["numberOfFilesWithCustomerError"] == 1
    stored = _check_every_frame(ahi, synthetic_import)
    assert set(stored.values()) == {"1.2.840.10008.1.2.4.202"}
    ct_sets = {s["importResponse"]["imageSetId"] for s in result.successes if "/ct/" in s["inputFile"]}
    assert len(ct_sets) == 1, "all slices of one series form one primary image set"


def test_synthetic_metadata_layout(ahi: LocalAHI, synthetic_import: ImportedData) -> None:
    mi = ahi.boto3_client()
    spec = synthetic_import.specs["ct"]
    image_set_id = synthetic_import.result.image_set_for("ct/ct-0000.dcm")
    document = _document(mi, synthetic_import.datastore_id, image_set_id)
    assert document["SchemaVersion"] == "1.1"
    assert document["ImageSetID"] == image_set_id and document["DatastoreID"] == synthetic_import.datastore_id
    assert document["Patient"]["DICOM"]["PatientID"] == spec.patient_id
    assert document["Study"]["DICOM"]["StudyInstanceUID"] == spec.study_uid
    series = document["Study"]["Series"][spec.series_uid]
    assert series["DICOM"]["Modality"] == "CT" and "FrameOfReferenceUID" in series["DICOM"]
    assert "PatientID" not in series["DICOM"] and "Rows" not in series["DICOM"]
    assert len(series["Instances"]) == 24
    instance = series["Instances"][spec.sop_uid(0)]
    dicom = instance["DICOM"]
    assert dicom["Rows"] == 96 and dicom["BitsAllocated"] == 16, "US values are JSON numbers"
    assert isinstance(dicom["ImagePositionPatient"], list) and len(dicom["ImagePositionPatient"]) == 3
    assert dicom["PixelData"] is None
    assert dicom["TransferSyntaxUID"] == "1.2.840.10008.1.2.1", "file meta stays at instance level"
    assert instance["DICOMVRs"] == {}
    frame = instance["ImageFrames"][0]
    assert frame["FrameSizeInBytes"] == 96 * 80 * 2
    levels = frame["PixelDataChecksumFromBaseToFullResolution"]
    assert [(level["Width"], level["Height"]) for level in levels] == [(20, 24), (40, 48), (80, 96)]


def test_reduced_resolution_checksums(ahi: LocalAHI, synthetic_import: ImportedData) -> None:
    mi = ahi.boto3_client()
    image_set_id = synthetic_import.result.image_set_for("ct/ct-0003.dcm")
    document = _document(mi, synthetic_import.datastore_id, image_set_id)
    spec = synthetic_import.specs["ct"]
    frame = document["Study"]["Series"][spec.series_uid]["Instances"][spec.sop_uid(3)]["ImageFrames"][0]
    data = mi.get_image_frame(
        datastoreId=synthetic_import.datastore_id,
        imageSetId=image_set_id,
        imageFrameInformation={"imageFrameId": frame["ID"]},
    )["imageFrameBlob"].read()
    for skip, level in zip((2, 1), frame["PixelDataChecksumFromBaseToFullResolution"], strict=False):
        reduced = decode_frame(data, reduce=skip)
        assert pixel_crc32(reduced) == level["Checksum"]


def test_real_files_decode_bit_exactly(ahi: LocalAHI, real_import: ImportedData) -> None:
    assert not real_import.result.failures, real_import.result.failures
    assert len(real_import.result.successes) == len(REAL_FILES)
    stored = _check_every_frame(ahi, real_import)
    assert stored["693_J2KI.dcm"] == "1.2.840.10008.1.2.4.91", "lossy JPEG 2000 is kept as imported"
    assert stored["SC_rgb_jpeg_dcmtk.dcm"] == "1.2.840.10008.1.2.4.50", "JPEG baseline is kept as imported"
    assert stored["liver.dcm"] == "1.2.840.10008.1.2.1", "binary segmentation stays bit-packed"
    assert stored["CT_small.dcm"] == "1.2.840.10008.1.2.4.202"
    assert stored["emri_small_jpeg_ls_lossless.dcm"] == "1.2.840.10008.1.2.4.202"


def test_real_file_private_tags_keep_vrs(ahi: LocalAHI, real_import: ImportedData) -> None:
    mi = ahi.boto3_client()
    ds = real_import.source(
        next(s["inputFile"] for s in real_import.result.successes if s["inputFile"].endswith("CT_small.dcm"))
    )
    document = _document(mi, real_import.datastore_id, real_import.result.image_set_for("CT_small.dcm"))
    instance = document["Study"]["Series"][ds.SeriesInstanceUID]["Instances"][ds.SOPInstanceUID]
    assert instance["DICOM"]["00090010"] == "GEMS_IDEN_01"
    assert instance["DICOMVRs"]["00090010"] == "LO"
    assert instance["DICOM"]["00431028"] is not None and instance["DICOMVRs"]["00431028"] == "OB"
    assert instance["DICOM"]["FileMetaInformationVersion"] == "AAE=", "binary values are base64"
    assert instance["DICOM"]["KVP"] == "120 ", "text keeps its DICOM padding"


def test_reimport_bumps_version_and_conflicts_go_non_primary(ahi: LocalAHI, tmp_path: Path) -> None:
    from ahi_torch.sample.synthetic import SeriesSpec, write_series

    spec = SeriesSpec(patient_id="REIMPORT", study_key="re", series_key="re", slices=3, rows=16, columns=16)
    write_series(tmp_path / "first", spec)
    first = ahi.import_dicom(tmp_path / "first")
    (image_set_id,) = first.image_set_ids
    again = ahi.import_dicom(tmp_path / "first", datastore_id=first.datastore_id)
    assert again.image_set_ids == [image_set_id]
    assert {s["importResponse"]["imageSetVersion"] for s in again.successes} == {2}
    renamed = SeriesSpec(**{**spec.__dict__, "patient_name": "Other^Name"})
    write_series(tmp_path / "conflict", renamed)
    conflict = ahi.import_dicom(tmp_path / "conflict", datastore_id=first.datastore_id)
    (other_id,) = conflict.image_set_ids
    assert other_id != image_set_id
    assert all(s["importResponse"]["isPrimary"] is False for s in conflict.successes)


@pytest.mark.parametrize("storage_format", ["JPEG_2000_LOSSLESS"])
def test_jpeg2000_lossless_datastore(ahi: LocalAHI, tmp_path: Path, storage_format: str) -> None:
    from ahi_torch.sample.synthetic import SeriesSpec, write_series

    spec = SeriesSpec(patient_id="J2K", study_key="j2k", series_key="j2k", slices=2, rows=32, columns=24)
    paths = write_series(tmp_path / "j2k", spec)
    datastore_id = ahi.create_datastore("j2k-store", storage_format=storage_format)
    result = ahi.import_dicom(tmp_path / "j2k", datastore_id=datastore_id)
    mi = ahi.boto3_client()
    document = _document(mi, datastore_id, result.image_set_ids[0])
    instance = document["Study"]["Series"][spec.series_uid]["Instances"][spec.sop_uid(0)]
    assert instance["StoredTransferSyntaxUID"] == "1.2.840.10008.1.2.4.90"
    response = mi.get_image_frame(
        datastoreId=datastore_id,
        imageSetId=result.image_set_ids[0],
        imageFrameInformation={"imageFrameId": instance["ImageFrames"][0]["ID"]},
    )
    assert response["contentType"] == "image/j2c"
    import pydicom

    decoded = decode_frame(response["imageFrameBlob"].read(), content_type="image/j2c")
    np.testing.assert_array_equal(decoded, pydicom.dcmread(paths[0]).pixel_array)


def test_imports_are_examined_in_processes(ahi: LocalAHI, synthetic_import: ImportedData) -> None:
    """The session service examines every file in its process pool (the checks above ran on that path)."""
    import os

    importer = ahi._importer
    files = len(synthetic_import.result.successes) + len(synthetic_import.result.failures)
    pool = importer.examiners()
    assert pool.through_slots >= files, "the synthetic import went through the pool, handed over in shared memory"
    assert pool.executor.submit(os.getpid).result() != os.getpid(), "in processes of their own"


def test_embedded_s3_inputs_are_listed_and_read_from_moto_without_http(
    ahi: LocalAHI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job lists and reads an embedded S3's objects in moto's store; what it cannot find there goes over HTTP."""
    spec = SeriesSpec(patient_id="DIRECT", study_key="direct", series_key="direct", slices=3, rows=16, columns=16)
    paths = write_series(tmp_path / "direct", spec)
    assert ahi.context is not None
    in_process = ahi.context.in_process_s3
    assert in_process is not None
    read: list[bool] = []
    listed: list[list[str] | None] = []

    class Counted:
        def read_object(self, bucket: str, key: str) -> bytes | None:
            found = in_process.read_object(bucket, key)
            read.append(found is not None)
            return found

        def list_keys(self, bucket: str, prefix: str) -> list[str] | None:
            listed.append(in_process.list_keys(bucket, prefix))
            return listed[-1]

    monkeypatch.setattr(ahi.context, "in_process_s3", Counted())
    result = ahi.import_dicom(tmp_path / "direct")
    assert result.status == "COMPLETED" and len(result.successes) == len(paths) == len(read)
    assert all(read), "every input came from moto's store, none over HTTP"
    assert len(listed) == 1 and listed[0] is not None and len(listed[0]) == len(paths), "listed in moto's store"

    class Absent:  # neither the bucket nor the objects are in moto's store: the S3 API answers instead
        def read_object(self, bucket: str, key: str) -> bytes | None:
            return None

        def list_keys(self, bucket: str, prefix: str) -> list[str] | None:
            return None

    monkeypatch.setattr(ahi.context, "in_process_s3", Absent())
    again = ahi.import_dicom(tmp_path / "direct", datastore_id=result.datastore_id)
    assert again.status == "COMPLETED" and len(again.successes) == len(paths), "listed and read over HTTP instead"
    assert again.manifest["jobSummary"]["numberOfScannedFiles"] == len(paths)


def test_in_process_listing_matches_the_s3_api(ahi: LocalAHI) -> None:
    """Keys listed in moto's store are those ListObjectsV2 pages through, in its order; no such bucket: None."""
    assert ahi.context is not None and ahi.context.in_process_s3 is not None
    s3 = ahi.s3_client()
    s3.create_bucket(Bucket="listing")
    for name in ["p/b", "p/a/2", "p/a/10", "p/\u00e9", "q/x", "p/", "p/Z", "pq"]:
        s3.put_object(Bucket="listing", Key=name, Body=b"x")
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket="listing", Prefix="p/", PaginationConfig={"PageSize": 2}
    )
    over_http = [item["Key"] for page in pages for item in page.get("Contents", [])]
    assert len(over_http) == 6
    assert ahi.context.in_process_s3.list_keys("listing", "p/") == over_http
    assert ahi.context.in_process_s3.list_keys("no-such-bucket", "") is None
    # One step aside: the bucket's root as the input, and a versioned bucket where a key was deleted.
    s3.put_bucket_versioning(Bucket="listing", VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket="listing", Key="p/b", Body=b"again")
    s3.delete_object(Bucket="listing", Key="p/a/2")
    for prefix in ("", "p/"):
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket="listing", Prefix=prefix)
        expected = [item["Key"] for page in pages for item in page.get("Contents", [])]
        assert ahi.context.in_process_s3.list_keys("listing", prefix) == expected, prefix
    assert "p/a/2" not in expected and "p/b" in expected, "a deleted key is not an input, a rewritten one once"


def test_files_that_share_a_name_all_arrive(ahi: LocalAHI, tmp_path: Path) -> None:
    """Issue 22.6: a/1.dcm and b/1.dcm keyed by name overwrote each other; half arrived, reported as success."""
    inputs = []
    for folder in ("a", "b"):
        spec = SeriesSpec(patient_id=f"SAME-{folder}", series_key=f"same{folder}", slices=4, rows=8, columns=8)
        write_series(tmp_path / folder, spec)
        for number, path in enumerate(sorted((tmp_path / folder).glob("*.dcm"))):
            path.rename(path.with_name(f"{number + 1}.dcm"))
        inputs.append(tmp_path / folder)
    result = ahi.import_dicom(inputs)
    summary = result.manifest["jobSummary"]
    assert summary["numberOfScannedFiles"] == summary["numberOfImportedFiles"] == 8
    assert len(result.image_set_ids) == 2
    direct = ahi.import_dicom([tmp_path / "a" / "1.dcm", tmp_path / "b" / "1.dcm"])
    assert direct.manifest["jobSummary"]["numberOfImportedFiles"] == 2, "two same-named files given directly"


def test_frames_are_synced_before_the_records_that_name_them(
    ahi: LocalAHI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pool workers write frame files without an fsync each; the job syncs them, and only them, before its commit."""
    from ahi_torch.local.models import store

    spec = SeriesSpec(patient_id="SYNC", study_key="sync", series_key="sync", slices=4, rows=16, columns=16)
    write_series(tmp_path / "sync", spec)
    datastore_id = ahi.create_datastore("sync")
    assert ahi.context is not None
    frames_dir = ahi.context.store.frames_dir
    before = {path.name for path in frames_dir.glob("*/*")}
    synced: list[Path] = []
    visible: list[int] = []
    fsync_each = store._fsync_each

    def sync(paths: Iterable[Path]) -> None:
        paths = list(paths)
        fsync_each(paths)
        synced.extend(paths)
        found = ahi.client().search_image_sets(datastoreId=datastore_id).get("imageSetsMetadataSummaries", [])
        visible.append(len(found))

    monkeypatch.setattr(store, "_fsync_each", sync)
    result = ahi.import_dicom(tmp_path / "sync", datastore_id=datastore_id)
    assert result.status == "COMPLETED" and len(result.successes) == 4
    written = {path.name for path in frames_dir.glob("*/*")} - before
    files = [path for path in synced if path.parent.parent == frames_dir]
    assert len(written) == 4 and sorted(path.name for path in files) == sorted(written), "each frame once"
    assert synced[len(files) :] == sorted({path.parent for path in files}), "then the folders that name them"
    assert visible and set(visible) == {0}, "every sync before any image set is visible"
    assert 0 < result.job_seconds < 60, "the job's own time, from submittedAt to endedAt"
