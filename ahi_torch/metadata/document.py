"""Parse a GetImageSetMetadata document into typed objects: image set → series → instances → frames.

>>> from ahi_torch.metadata import ImageSetMetadata
>>> image_set = ImageSetMetadata.parse(client.get_image_set_metadata(datastoreId=d, imageSetId=i))
>>> for series in image_set.series:
...     volume_order = series.geometry().order          # instances sorted along the slice normal
...     for instance in series.instances:
...         print(instance.sop_instance_uid, [frame.id for frame in instance.frames])

Only what training needs is lifted into fields; every attribute stays available in the
``dicom`` mappings as AHI wrote it. Private tags, sequences and nulls never break parsing:
missing values become ``None`` (or the DICOM default, such as a rescale slope of 1).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import MetadataError
from . import values
from .geometry import SeriesGeometry, series_geometry
from .pixel import PixelDescription

DEFAULT_STORED_SYNTAX = "1.2.840.10008.1.2.4.202"


@dataclass(frozen=True)
class FrameChecksum:
    """CRC32 of the decoded pixels at one resolution level."""

    width: int
    height: int
    checksum: int


@dataclass(frozen=True)
class FrameInfo:
    """One entry of an instance's ``ImageFrames``; ``number`` is the 1-based DICOM frame number."""

    id: str
    number: int
    checksums: tuple[FrameChecksum, ...] = ()
    min_value: int | None = None
    max_value: int | None = None
    size: int | None = None
    #: This frame's own values from ``PerFrameFunctionalGroupsSequence`` (None: the instance's).
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    window_center: float | None = None
    window_width: float | None = None
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, float, float, float, float, float] | None = None
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None

    @property
    def full_checksum(self) -> int | None:
        """The checksum of the full-resolution decode (the largest level listed)."""
        if not self.checksums:
            return None
        return max(self.checksums, key=lambda c: c.width * c.height).checksum

    def checksum_levels(self) -> list[dict[str, int]]:
        """The levels as AHI writes them (for :func:`ahi_torch.codecs.verify_pixels`)."""
        return [{"Width": c.width, "Height": c.height, "Checksum": c.checksum} for c in self.checksums]


@dataclass(frozen=True)
class InstanceMetadata:
    """A SOP instance: its attributes, stored transfer syntax, pixel layout, geometry and frames."""

    sop_instance_uid: str
    series_instance_uid: str
    dicom: Mapping[str, Any]
    vrs: Mapping[str, str]
    stored_transfer_syntax: str
    frames: tuple[FrameInfo, ...]
    pixel: PixelDescription | None
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    window_center: float | None = None
    window_width: float | None = None
    instance_number: int | None = None
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, float, float, float, float, float] | None = None
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None

    @property
    def sop_class_uid(self) -> str | None:
        return values.text(self.dicom.get("SOPClassUID"))

    def frame(self, number: int) -> FrameInfo:
        """Frame ``number`` (1-based, DICOM numbering): ``ImageFrames[number - 1]``."""
        if not 1 <= number <= len(self.frames):
            raise MetadataError(f"instance {self.sop_instance_uid} has {len(self.frames)} frames, not frame {number}")
        return self.frames[number - 1]


@dataclass(frozen=True)
class SeriesMetadata:
    """A series of an image set with its instances (in document order; see :meth:`geometry`)."""

    series_instance_uid: str
    dicom: Mapping[str, Any]
    instances: tuple[InstanceMetadata, ...]

    @property
    def modality(self) -> str | None:
        return values.text(self.dicom.get("Modality"))

    @property
    def series_number(self) -> int | None:
        return values.integer(self.dicom.get("SeriesNumber"))

    def geometry(self) -> SeriesGeometry:
        """Slice order (ImagePositionPatient along the normal, else InstanceNumber), spacing, affine."""
        return series_geometry(self.instances)


@dataclass(frozen=True)
class ImageSetMetadata:
    """A parsed metadata document."""

    image_set_id: str
    datastore_id: str
    schema_version: str
    patient: Mapping[str, Any]
    study: Mapping[str, Any]
    series: tuple[SeriesMetadata, ...]
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def parse(cls, document: Mapping[str, Any]) -> ImageSetMetadata:
        """Build from the JSON document GetImageSetMetadata returns (already gunzipped and parsed)."""
        if not isinstance(document, Mapping) or "Study" not in document:
            raise MetadataError("not an image set metadata document: no Study level")
        study_level = document.get("Study") or {}
        patient = (document.get("Patient") or {}).get("DICOM") or {}
        study = study_level.get("DICOM") or {}
        series = tuple(
            _parse_series(uid, entry or {}, [study, patient])
            for uid, entry in sorted((study_level.get("Series") or {}).items())
        )
        return cls(
            image_set_id=str(document.get("ImageSetID") or ""),
            datastore_id=str(document.get("DatastoreID") or ""),
            schema_version=str(document.get("SchemaVersion") or ""),
            patient=patient,
            study=study,
            series=series,
            raw=document,
        )

    def instances(self) -> Iterator[InstanceMetadata]:
        for series in self.series:
            yield from series.instances

    def frames(self) -> Iterator[tuple[InstanceMetadata, FrameInfo]]:
        for instance in self.instances():
            for frame in instance.frames:
                yield instance, frame

    def find_frame(self, frame_id: str) -> tuple[InstanceMetadata, FrameInfo]:
        for instance, frame in self.frames():
            if frame.id == frame_id:
                return instance, frame
        raise MetadataError(f"image set {self.image_set_id} has no frame {frame_id}")

    @property
    def patient_id(self) -> str | None:
        return values.text(self.patient.get("PatientID"))

    @property
    def study_instance_uid(self) -> str | None:
        return values.text(self.study.get("StudyInstanceUID"))


def _parse_frames(entries: Any) -> tuple[FrameInfo, ...]:
    frames = []
    for number, entry in enumerate(entries or [], start=1):
        if not isinstance(entry, Mapping) or not entry.get("ID"):
            raise MetadataError(f"ImageFrames entry {number} has no ID")
        checksums = tuple(
            FrameChecksum(int(c["Width"]), int(c["Height"]), int(c["Checksum"]) & 0xFFFFFFFF)
            for c in entry.get("PixelDataChecksumFromBaseToFullResolution") or []
            if isinstance(c, Mapping) and c.get("Checksum") is not None
        )
        frames.append(
            FrameInfo(
                id=str(entry["ID"]),
                number=number,
                checksums=checksums,
                min_value=values.integer(entry.get("MinPixelValue")),
                max_value=values.integer(entry.get("MaxPixelValue")),
                size=values.integer(entry.get("FrameSizeInBytes")),
            )
        )
    return tuple(frames)


def _triple(value: Any) -> tuple[float, float, float] | None:
    found = values.numbers(value)
    return (found[0], found[1], found[2]) if found and len(found) == 3 else None


#: Where enhanced (multi-frame) instances keep what classic ones hold at the top level:
#: keyword -> the functional group sequence that carries it (PS3.3 C.7.6.16).
FUNCTIONAL_GROUPS = {
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
    "WindowCenter": "FrameVOILUTSequence",
    "WindowWidth": "FrameVOILUTSequence",
    "PixelSpacing": "PixelMeasuresSequence",
    "SliceThickness": "PixelMeasuresSequence",
    "ImageOrientationPatient": "PlaneOrientationSequence",
    "ImagePositionPatient": "PlanePositionSequence",
}


def _first_item(value: Any) -> Mapping[str, Any]:
    item = value[0] if isinstance(value, list) and value else None
    return item if isinstance(item, Mapping) else {}


def functional_value(dicom: Mapping[str, Any], keyword: str, frame: int | None = None) -> Any:
    """``keyword`` of an instance: the frame's functional group, the shared one, then the top level.

    ``frame`` is the 0-based frame index; None reads only the shared group and the top level.
    Enhanced CT/MR/PET instances keep rescale, window, spacing and orientation in their
    functional groups, and AHI's metadata carries them there.
    """
    group = FUNCTIONAL_GROUPS.get(keyword)
    if group is not None:
        if frame is not None:
            per_frame = dicom.get("PerFrameFunctionalGroupsSequence")
            if isinstance(per_frame, list) and frame < len(per_frame) and isinstance(per_frame[frame], Mapping):
                value = _first_item(per_frame[frame].get(group)).get(keyword)
                if value is not None:
                    return value
            return None  # the frame has no value of its own: the instance's applies
        value = _first_item(_first_item(dicom.get("SharedFunctionalGroupsSequence")).get(group)).get(keyword)
        if value is not None:
            return value
    return dicom.get(keyword)


def _frame_values(dicom: Mapping[str, Any], frames: tuple[FrameInfo, ...]) -> tuple[FrameInfo, ...]:
    """Frames with the rescale and window their per-frame functional groups give them."""
    if not isinstance(dicom.get("PerFrameFunctionalGroupsSequence"), list):
        return frames
    return tuple(
        replace(
            frame,
            rescale_slope=values.number(functional_value(dicom, "RescaleSlope", index)),
            rescale_intercept=values.number(functional_value(dicom, "RescaleIntercept", index)),
            window_center=values.number(functional_value(dicom, "WindowCenter", index)),
            window_width=values.number(functional_value(dicom, "WindowWidth", index)),
            position=_triple(functional_value(dicom, "ImagePositionPatient", index)),
            orientation=_six(functional_value(dicom, "ImageOrientationPatient", index)),
            pixel_spacing=_pair(functional_value(dicom, "PixelSpacing", index)),
            slice_thickness=values.number(functional_value(dicom, "SliceThickness", index)),
        )
        for index, frame in enumerate(frames)
    )


def _six(value: Any) -> tuple[float, float, float, float, float, float] | None:
    found = values.numbers(value)
    return (found[0], found[1], found[2], found[3], found[4], found[5]) if found and len(found) == 6 else None


def _pair(value: Any) -> tuple[float, float] | None:
    found = values.numbers(value)
    return (found[0], found[1]) if found and len(found) == 2 else None


def _parse_instance(
    sop_uid: str, series_uid: str, entry: Mapping[str, Any], outer: list[Mapping[str, Any]]
) -> InstanceMetadata:
    dicom = entry.get("DICOM") or {}
    levels = [{k: functional_value(dicom, k) for k in ("ImageOrientationPatient", "PixelSpacing")}, *outer]
    orientation = values.numbers(values.lookup(levels, "ImageOrientationPatient"))
    spacing = values.numbers(values.lookup(levels, "PixelSpacing"))
    slope = values.number(functional_value(dicom, "RescaleSlope"))
    intercept = values.number(functional_value(dicom, "RescaleIntercept"))
    return InstanceMetadata(
        sop_instance_uid=sop_uid,
        series_instance_uid=series_uid,
        dicom=dicom,
        vrs=entry.get("DICOMVRs") or {},
        stored_transfer_syntax=str(entry.get("StoredTransferSyntaxUID") or DEFAULT_STORED_SYNTAX),
        frames=_frame_values(dicom, _parse_frames(entry.get("ImageFrames"))),
        pixel=PixelDescription.from_dicom(dicom),
        rescale_slope=1.0 if slope is None or slope == 0 else slope,
        rescale_intercept=0.0 if intercept is None else intercept,
        window_center=values.number(functional_value(dicom, "WindowCenter")),
        window_width=values.number(functional_value(dicom, "WindowWidth")),
        instance_number=values.integer(dicom.get("InstanceNumber")),
        position=_triple(dicom.get("ImagePositionPatient")),
        orientation=tuple(orientation) if orientation and len(orientation) == 6 else None,  # type: ignore[arg-type]
        pixel_spacing=(spacing[0], spacing[1]) if spacing and len(spacing) == 2 else None,
        slice_thickness=values.number(functional_value(dicom, "SliceThickness")),
    )


def _parse_series(series_uid: str, entry: Mapping[str, Any], outer: list[Mapping[str, Any]]) -> SeriesMetadata:
    dicom = entry.get("DICOM") or {}
    instances = tuple(
        _parse_instance(sop_uid, series_uid, instance or {}, [dicom, *outer])
        for sop_uid, instance in sorted((entry.get("Instances") or {}).items())
    )
    return SeriesMetadata(series_instance_uid=series_uid, dicom=dicom, instances=instances)
