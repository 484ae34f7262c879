"""Synthetic AHI metadata documents: an archive of any size without DICOM files or a service.

Each document is one image set in AHI's metadata layout (hex IDs, UIDs, per-frame checksums at
every resolution), one CT series of 512² frames, deterministic in its number and seed. The index
scale benchmark builds millions of frames from them; the tests build indexes of known content.

>>> from ahi_torch.sample.metadata_documents import DATASTORE, metadata_document
>>> document = metadata_document(0, DATASTORE, slices=3)
>>> ImageSetMetadata.parse(document).series[0].instances[0].frames[0].id
'9c1f…'
"""

from __future__ import annotations

import random
from typing import Any

#: A data store ID the documents can name (any 32 hex digits would do).
DATASTORE = "0123456789abcdef0123456789abcdef"
SYNTAX = "1.2.840.10008.1.2.4.202"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _uid(rng: random.Random, root: str = "1.3.12.2.1107.5.1.4.73104") -> str:
    return f"{root}.{rng.randrange(10**17, 10**18)}"


def metadata_document(number: int, datastore_id: str, slices: int, seed: int = 0) -> dict[str, Any]:
    """Image set ``number`` of a synthetic archive: one CT series of ``slices`` 512² frames."""
    rng = random.Random(seed * 1_000_003 + number)
    patient = f"SYN{number // 3:07d}"  # three studies per patient
    series_uid = _uid(rng)
    spacing = rng.choice([0.625, 1.0, 1.25, 2.5, 5.0])
    in_plane = round(rng.uniform(0.5, 0.9), 6)
    origin = (round(rng.uniform(-250, -150), 4), round(rng.uniform(-250, -150), 4), round(rng.uniform(-400, 0), 4))
    instances = {}
    stem = series_uid.rsplit(".", 1)[0]
    base = rng.randrange(10**17, 10**18 - slices)
    for k in range(slices):
        position = [origin[0], origin[1], round(origin[2] + k * spacing, 4)]
        instances[f"{stem}.{base + k}"] = _instance(rng, k, position, spacing, in_plane)
    return {
        "SchemaVersion": "1.1",
        "DatastoreID": datastore_id,
        "ImageSetID": f"{rng.getrandbits(128):032x}",
        "Patient": {"DICOM": {"PatientID": patient, "PatientSex": rng.choice("FM"), "PatientBirthDate": "19600101"}},
        "Study": {
            "DICOM": {
                "StudyInstanceUID": _uid(random.Random(f"study{number // 2}")),  # two series per study
                "StudyDate": "20240101",
                "StudyDescription": "CT CHEST",
                "AccessionNumber": f"A{number // 2:09d}",
            },
            "Series": {
                series_uid: {
                    "DICOM": {
                        "SeriesInstanceUID": series_uid,
                        "Modality": "CT",
                        "SeriesNumber": 2,
                        "SeriesDescription": "AXIAL 1.25",
                        "BodyPartExamined": "CHEST",
                    },
                    "Instances": instances,
                }
            },
        },
    }


def _instance(rng: random.Random, k: int, position: list[float], spacing: float, in_plane: float) -> dict[str, Any]:
    """Slice ``k`` of the series: its DICOM attributes and its one frame (ID, checksums at every level)."""
    checksums = [{"Width": 512 >> level, "Height": 512 >> level, "Checksum": rng.getrandbits(32)} for level in range(6)]
    return {
        "DICOM": {
            "SOPClassUID": CT_IMAGE,
            "InstanceNumber": k + 1,
            "ImagePositionPatient": position,
            "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
            "PixelSpacing": [in_plane, in_plane],
            "SliceThickness": spacing,
            "Rows": 512,
            "Columns": 512,
            "SamplesPerPixel": 1,
            "BitsAllocated": 16,
            "BitsStored": 12,
            "HighBit": 11,
            "PixelRepresentation": 0,
            "PhotometricInterpretation": "MONOCHROME2",
            "RescaleSlope": 1,
            "RescaleIntercept": -1024,
            "WindowCenter": 40,
            "WindowWidth": 400,
        },
        "StoredTransferSyntaxUID": SYNTAX,
        "ImageFrames": [
            {
                "ID": f"{rng.getrandbits(128):032x}",
                "PixelDataChecksumFromBaseToFullResolution": checksums,
                "MinPixelValue": 0,
                "MaxPixelValue": 4095,
                "FrameSizeInBytes": 524288,
            }
        ],
    }
