"""Parsing metadata documents: AHI's real layout, private tags, sequences, nulls, geometry."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from ahi_torch.errors import MetadataError
from ahi_torch.local import LocalAHI
from ahi_torch.metadata import ImageSetMetadata, slice_normal

from ..conftest import ImportedData

# Trimmed from the aws-samples usdoppler.json export quoted in shared/reference/ahi-service.md.
USDOPPLER = {
    "SchemaVersion": "1.1",
    "DatastoreID": "169224ef14db49839f628fb887d50291",
    "ImageSetID": "1e29a254a6ff080f17e9c318c7cb45af",
    "Patient": {"DICOM": {"PatientBirthDate": None, "PatientSex": None, "PatientID": None, "PatientName": "US Echo"}},
    "Study": {
        "DICOM": {
            "StudyTime": "152643",
            "StudyDate": "20120418",
            "StudyInstanceUID": "1.3.6.1.4.1.25403.166563008443.732.1",
        },
        "Series": {
            "1.3.6.1.4.1.25403.166563008443.732.2": {
                "DICOM": {
                    "SoftwareVersions": ["1.06"],
                    "Manufacturer": "ACUSON",
                    "SeriesNumber": None,
                    "Modality": "US",
                },
                "Instances": {
                    "1.3.6.1.4.1.25403.166563008443.732.3": {
                        "DICOM": {
                            "SamplesPerPixel": 3,
                            "BitsAllocated": 8,
                            "BitsStored": 8,
                            "Rows": 480,
                            "Columns": 640,
                            "PhotometricInterpretation": "YBR_FULL",
                            "NumberOfFrames": "1",
                            "SequenceOfUltrasoundRegions": [{"RegionFlags": 1, "PhysicalDeltaX": 1}],
                            "7FDD0010": "TSC Private Group",
                            "7FDF1001": "AQA=",
                            "PixelData": None,
                        },
                        "DICOMVRs": {"7FDD0010": "LO", "7FDF1001": "UN"},
                        "ImageFrames": [
                            {
                                "ID": "575f838ec9c7db93e731de407e1bed6c",
                                "PixelDataChecksumFromBaseToFullResolution": [
                                    {"Width": 160, "Height": 120, "Checksum": 740549643},
                                    {"Width": 320, "Height": 240, "Checksum": 13255855},
                                    {"Width": 640, "Height": 480, "Checksum": 2095233973},
                                ],
                                "MinPixelValue": 0,
                                "MaxPixelValue": 255,
                                "FrameSizeInBytes": 921600,
                            }
                        ],
                    }
                },
            }
        },
    },
}


def test_parses_real_ahi_document() -> None:
    image_set = ImageSetMetadata.parse(USDOPPLER)
    assert image_set.image_set_id == "1e29a254a6ff080f17e9c318c7cb45af"
    assert image_set.patient_id is None
    (series,) = image_set.series
    assert series.modality == "US" and series.series_number is None
    (instance,) = series.instances
    assert instance.stored_transfer_syntax == "1.2.840.10008.1.2.4.202", "missing StoredTransferSyntaxUID means HTJ2K"
    assert instance.pixel is not None and instance.pixel.shape == (480, 640, 3)
    assert instance.pixel.dtype == np.uint8 and instance.pixel.frame_bytes == 921600
    assert instance.vrs["7FDF1001"] == "UN" and instance.dicom["SequenceOfUltrasoundRegions"][0]["RegionFlags"] == 1
    frame = instance.frame(1)
    assert frame.id == "575f838ec9c7db93e731de407e1bed6c" and frame.number == 1
    assert frame.full_checksum == 2095233973
    assert instance.rescale_slope == 1.0 and instance.rescale_intercept == 0.0
    with pytest.raises(MetadataError, match="has 1 frames, not frame 2"):
        instance.frame(2)


def test_rejects_non_documents() -> None:
    with pytest.raises(MetadataError):
        ImageSetMetadata.parse({"hello": "world"})
    broken = {"Study": {"Series": {"1.2": {"Instances": {"1.2.3": {"ImageFrames": [{"nope": 1}]}}}}}}
    with pytest.raises(MetadataError, match="no ID"):
        ImageSetMetadata.parse(broken)


def test_multiframe_maps_frame_n_to_image_frames(ahi: LocalAHI, synthetic_import: ImportedData) -> None:
    client = ahi.client()
    image_set_id = synthetic_import.result.image_set_for("mr/mr-multiframe.dcm")
    document = client.get_image_set_metadata(datastoreId=synthetic_import.datastore_id, imageSetId=image_set_id)
    image_set = ImageSetMetadata.parse(document)
    (instance,) = image_set.instances()
    raw_frames = next(iter(document["Study"]["Series"].values()))["Instances"][instance.sop_instance_uid]["ImageFrames"]
    assert [instance.frame(n).id for n in range(1, 7)] == [f["ID"] for f in raw_frames]
    assert instance.pixel is not None and instance.pixel.number_of_frames == 6 and instance.pixel.bits_stored == 12


def test_private_tags_and_sequences_from_real_files(ahi: LocalAHI, real_import: ImportedData) -> None:
    client = ahi.client()
    for name in ("CT_small.dcm", "US1_UNCR.dcm", "liver.dcm"):
        document = client.get_image_set_metadata(
            datastoreId=real_import.datastore_id, imageSetId=real_import.result.image_set_for(name)
        )
        image_set = ImageSetMetadata.parse(document)
        for instance in image_set.instances():
            assert instance.frames and instance.pixel is not None
            assert all(frame.full_checksum is not None for frame in instance.frames)
    ct = ImageSetMetadata.parse(
        client.get_image_set_metadata(
            datastoreId=real_import.datastore_id, imageSetId=real_import.result.image_set_for("CT_small.dcm")
        )
    )
    (instance,) = ct.instances()
    assert instance.rescale_intercept == -1024.0 and instance.pixel_spacing is not None


def test_geometry_matches_pydicom(ahi: LocalAHI, synthetic_import: ImportedData) -> None:
    client = ahi.client()
    image_set_id = synthetic_import.result.image_set_for("ct/ct-0000.dcm")
    image_set = ImageSetMetadata.parse(
        client.get_image_set_metadata(datastoreId=synthetic_import.datastore_id, imageSetId=image_set_id)
    )
    (series,) = image_set.series
    geometry = series.geometry()
    assert geometry.sorted_by == "position"
    ordered_uids = [series.instances[i].sop_instance_uid for i in geometry.order]

    sources = [pydicom.dcmread(path) for path in sorted((synthetic_import.root / "ct").glob("*.dcm"))]
    normal = np.cross(
        np.array(sources[0].ImageOrientationPatient[:3], float), np.array(sources[0].ImageOrientationPatient[3:], float)
    )
    by_position = sorted(sources, key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float))))
    assert ordered_uids == [ds.SOPInstanceUID for ds in by_position]
    by_number = sorted(sources, key=lambda ds: int(ds.InstanceNumber))
    assert ordered_uids != [ds.SOPInstanceUID for ds in by_number], "the fixture must shuffle InstanceNumber"

    first, last = by_position[0], by_position[-1]
    iop = np.array(first.ImageOrientationPatient, float)
    spacing = np.array(first.PixelSpacing, float)
    # The affine indexes the volume tensor's axes in order: (slice, row, column).
    expected = np.eye(4)
    expected[:3, 0] = (np.array(last.ImagePositionPatient, float) - np.array(first.ImagePositionPatient, float)) / (
        len(sources) - 1
    )
    expected[:3, 1] = iop[3:] * spacing[0]
    expected[:3, 2] = iop[:3] * spacing[1]
    expected[:3, 3] = np.array(first.ImagePositionPatient, float)
    np.testing.assert_allclose(geometry.affine, expected, atol=1e-6)
    assert geometry.spacing == pytest.approx((2.5, 0.8, 0.8), abs=1e-4)  # DS values carry 6 digits
    assert geometry.regular and geometry.irregularity == ""
    np.testing.assert_allclose(slice_normal(iop), normal / np.linalg.norm(normal))
    # Voxel (slice 3, row 7, column 5) lands where pydicom's slice 3 puts that pixel.
    ds = by_position[3]
    point = np.array(ds.ImagePositionPatient, float) + 5 * spacing[1] * iop[:3] + 7 * spacing[0] * iop[3:]
    np.testing.assert_allclose(geometry.affine @ np.array([3, 7, 5, 1.0]), [*point, 1.0], atol=1e-4)


def test_instance_number_fallback() -> None:
    def instance(sop: str, number: int) -> dict:
        return {
            "DICOM": {"InstanceNumber": str(number), "Rows": 2, "Columns": 2},
            "ImageFrames": [{"ID": sop.replace(".", "a").ljust(32, "0")}],
        }

    document = {
        "Study": {
            "Series": {
                "1.2": {
                    "DICOM": {},
                    "Instances": {
                        "1.2.1": instance("1.2.1", 3),
                        "1.2.2": instance("1.2.2", 1),
                        "1.2.3": instance("1.2.3", 2),
                    },
                }
            }
        },
    }
    (series,) = ImageSetMetadata.parse(document).series
    geometry = series.geometry()
    assert geometry.sorted_by == "instance_number" and geometry.affine is None
    assert [series.instances[i].sop_instance_uid for i in geometry.order] == ["1.2.2", "1.2.3", "1.2.1"]
