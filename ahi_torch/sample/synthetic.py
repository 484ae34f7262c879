"""Synthetic DICOM with real geometry: CT-like series, multi-frame and RGB instances.

No package ships a multi-slice series or an HTJ2K DICOM file, so the demo, the tests and the
benchmarks make their own with pydicom (install ``ahi-torch[local]``):

>>> from ahi_torch.sample.synthetic import SeriesSpec, write_series
>>> files = write_series("data/ct1", SeriesSpec(slices=24, rows=128, columns=128, nodule=True))

Each CT slice is a phantom (body ellipse, lungs, spine, optional bright nodule) in signed int16
with ``RescaleIntercept=-1024``; slice positions follow ``ImageOrientationPatient`` so a
geometric sort is needed to stack them, and ``shuffle_instance_numbers`` makes InstanceNumber
disagree with geometry on purpose.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

_UID_ROOT = "1.2.826.0.1.3680043.10.1434."  # example root; UIDs below are derived deterministically


def uid(*parts: object) -> str:
    """A deterministic DICOM UID (≤ 64 characters) from the given parts."""
    import hashlib

    digest = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest(), 16)
    return (_UID_ROOT + str(digest))[:64].rstrip(".")


def oblique(degrees: float) -> tuple[float, ...]:
    """ImageOrientationPatient tilted ``degrees`` about the patient's left-right axis."""
    a = np.deg2rad(degrees)
    return (1.0, 0.0, 0.0, 0.0, float(np.cos(a)), float(np.sin(a)))


@dataclass(frozen=True)
class SeriesSpec:
    """What :func:`write_series` generates; every field has a sensible default."""

    patient_id: str = "SYN-0001"
    patient_name: str = "Synthetic^Patient"
    patient_sex: str = "O"
    patient_birth_date: str = "19700101"
    study_key: str = "study-1"
    series_key: str = "series-1"
    study_date: str = "20240101"
    study_time: str = "120000"
    accession_number: str = "ACC0001"
    study_id: str = "1"
    series_number: int = 1
    modality: str = "CT"
    body_part: str = "CHEST"
    description: str = "Synthetic CT"
    slices: int = 24
    rows: int = 64
    columns: int = 64
    pixel_spacing: tuple[float, float] = (0.8, 0.8)
    slice_spacing: float = 2.5
    orientation: tuple[float, ...] = AXIAL
    origin: tuple[float, float, float] = (-25.0, -25.0, -100.0)
    nodule: bool = False
    transfer_syntax: str = "1.2.840.10008.1.2.1"
    shuffle_instance_numbers: bool = False
    seed: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def study_uid(self) -> str:
        return uid("study", self.patient_id, self.study_key)

    @property
    def series_uid(self) -> str:
        return uid("series", self.patient_id, self.study_key, self.series_key)

    def sop_uid(self, index: int) -> str:
        return uid("sop", self.patient_id, self.study_key, self.series_key, index)


def phantom_slice(rows: int, columns: int, z: float, *, nodule: bool, rng: np.random.Generator) -> np.ndarray:
    """One CT-like slice in Hounsfield units (float), varying smoothly with ``z`` (mm)."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = (rows - 1) / 2, (columns - 1) / 2
    ny, nx = (y - cy) / (rows / 2), (x - cx) / (columns / 2)
    hu = np.full((rows, columns), -1000.0, dtype=np.float32)
    body = (nx / 0.9) ** 2 + (ny / 0.7) ** 2 <= 1
    hu[body] = 40.0 + 10 * np.sin(z / 20.0)
    for side in (-1, 1):
        lung = ((nx - side * 0.38) / 0.28) ** 2 + ((ny + 0.05) / 0.45) ** 2 <= 1
        hu[lung] = -800.0
    spine = (nx / 0.12) ** 2 + ((ny - 0.5) / 0.12) ** 2 <= 1
    hu[spine] = 700.0
    if nodule:
        radius = 0.12 * (0.7 + 0.3 * np.cos(z / 30.0))
        lesion = ((nx + 0.38) ** 2 + (ny + 0.05) ** 2) <= radius**2
        hu[lesion] = 250.0
    hu += rng.normal(0, 15, size=hu.shape).astype(np.float32)
    outside_fov = nx**2 + ny**2 > 1.35
    hu[outside_fov] = -3024.0  # padding value below air: negative stored values
    return hu


def _base_dataset(spec: SeriesSpec, sop_class: str, sop_uid: str, instance_number: int):  # type: ignore[no-untyped-def]
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.FrameOfReferenceUID = uid("for", spec.patient_id, spec.study_key)
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientSex = spec.patient_sex
    ds.PatientBirthDate = spec.patient_birth_date
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.AccessionNumber = spec.accession_number
    ds.StudyID = spec.study_id
    ds.StudyDescription = "Synthetic study"
    ds.ReferringPhysicianName = ""
    ds.Modality = spec.modality
    ds.SeriesNumber = spec.series_number
    ds.SeriesDescription = spec.description
    ds.BodyPartExamined = spec.body_part
    ds.Manufacturer = "ahi_torch synthetic"
    ds.InstanceNumber = instance_number
    ds.ContentDate = spec.study_date
    ds.ContentTime = spec.study_time
    for keyword, value in spec.extra.items():
        setattr(ds, keyword, value)
    return ds


def _set_pixels(ds, pixels: np.ndarray, transfer_syntax: str) -> None:  # type: ignore[no-untyped-def]
    """Store ``pixels`` (frames, rows, columns[, 3]) in ``ds`` using ``transfer_syntax``."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    if transfer_syntax in ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"):
        import imagecodecs

        frames = [bytes(imagecodecs.htj2k_encode(np.ascontiguousarray(f), reversible=True, tlm=True)) for f in pixels]
        ds.PixelData = encapsulate(frames)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
        return
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OW" if pixels.dtype.itemsize > 1 else "OB"
    if transfer_syntax == "1.2.840.10008.1.2":
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)  # implicit VR: same bytes, other encoding
    elif transfer_syntax != "1.2.840.10008.1.2.1":
        ds.compress(UID(transfer_syntax), encoding_plugin="pylibjpeg" if "4.9" in transfer_syntax else "")


def series_slices(spec: SeriesSpec) -> list[tuple[np.ndarray, tuple[float, float, float], int]]:
    """(stored int16 pixels, ImagePositionPatient, InstanceNumber) of each slice, in geometric order."""
    rng = np.random.default_rng(spec.seed)
    row_dir = np.array(spec.orientation[:3])
    col_dir = np.array(spec.orientation[3:])
    normal = np.cross(row_dir, col_dir)
    numbers = np.arange(1, spec.slices + 1)
    if spec.shuffle_instance_numbers:
        numbers = rng.permutation(numbers)
    slices = []
    for index in range(spec.slices):
        position = np.array(spec.origin) + index * spec.slice_spacing * normal
        hu = phantom_slice(spec.rows, spec.columns, float(index * spec.slice_spacing), nodule=spec.nodule, rng=rng)
        stored = np.clip(np.round(hu + 1024.0), -32768, 32767).astype(np.int16)
        slices.append((stored, (float(position[0]), float(position[1]), float(position[2])), int(numbers[index])))
    return slices


def write_series(directory: str | Path, spec: SeriesSpec) -> list[Path]:
    """Write one CT series (one file per slice) into ``directory``; returns the paths in geometric order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (stored, position, number) in enumerate(series_slices(spec)):
        ds = _base_dataset(spec, CT_IMAGE_STORAGE, spec.sop_uid(index), number)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in spec.orientation]
        ds.PixelSpacing = [f"{v:.6g}" for v in spec.pixel_spacing]
        ds.SliceThickness = f"{spec.slice_spacing:.6g}"
        ds.SliceLocation = f"{position[2]:.6g}"
        ds.KVP = "120"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelPaddingValue = -2000
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = spec.rows, spec.columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        _set_pixels(ds, stored[None], spec.transfer_syntax)
        path = directory / f"{spec.series_key}-{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_multiframe(
    directory: str | Path,
    spec: SeriesSpec,
    frames: int = 8,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
) -> Path:
    """One multi-frame MR-like instance (uint16, 12 bits stored) with ``frames`` frames."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed + 7)
    y, x = np.mgrid[0 : spec.rows, 0 : spec.columns]
    stack = np.stack(
        [
            (2000 + 1000 * np.sin(x / 6.0 + k) * np.cos(y / 9.0) + rng.normal(0, 40, (spec.rows, spec.columns)))
            for k in range(frames)
        ]
    )
    pixels = np.clip(stack, 0, 4095).astype(np.uint16)
    ds = _base_dataset(spec, MR_IMAGE_STORAGE, spec.sop_uid(10_000), 1)
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = spec.rows, spec.columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [f"{v:.6g}" for v in spec.pixel_spacing]
    _set_pixels(ds, pixels, transfer_syntax)
    path = directory / f"{spec.series_key}-multiframe.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_enhanced_ct(directory: str | Path, spec: SeriesSpec, slopes: tuple[float, ...] = ()) -> Path:
    """One Enhanced CT instance holding the series as frames, in a seeded random frame order.

    Each frame's ImagePositionPatient sits in its ``PerFrameFunctionalGroupsSequence``; orientation,
    pixel spacing and the rescale sit in ``SharedFunctionalGroupsSequence``, as scanners write them.
    ``slopes`` (one per frame, in frame order) moves the rescale into each frame's own group.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def item(**values: object) -> Sequence:
        inner = Dataset()
        for keyword, value in values.items():
            setattr(inner, keyword, value)
        return Sequence([inner])

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    slices = series_slices(spec)
    order = np.random.default_rng(spec.seed + 11).permutation(len(slices))
    ds = _base_dataset(spec, ENHANCED_CT_IMAGE_STORAGE, spec.sop_uid(20_000), 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = len(slices)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = spec.rows, spec.columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    shared = Dataset()
    shared.PlaneOrientationSequence = item(ImageOrientationPatient=[f"{v:.6g}" for v in spec.orientation])
    shared.PixelMeasuresSequence = item(
        PixelSpacing=[f"{v:.6g}" for v in spec.pixel_spacing], SliceThickness=f"{spec.slice_spacing:.6g}"
    )
    if not slopes:
        shared.PixelValueTransformationSequence = item(RescaleIntercept="-1024", RescaleSlope="1", RescaleType="HU")
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for number, index in enumerate(order):
        frame = Dataset()
        frame.PlanePositionSequence = item(ImagePositionPatient=[f"{v:.6g}" for v in slices[index][1]])
        frame.FrameContentSequence = item(InStackPositionNumber=int(index) + 1)
        if slopes:
            frame.PixelValueTransformationSequence = item(
                RescaleIntercept="-1024", RescaleSlope=f"{slopes[number]:.6g}", RescaleType="HU"
            )
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    _set_pixels(ds, np.stack([slices[i][0] for i in order]), spec.transfer_syntax)
    path = directory / f"{spec.series_key}-enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_rgb(directory: str | Path, spec: SeriesSpec, transfer_syntax: str = "1.2.840.10008.1.2.1") -> Path:
    """One RGB secondary-capture instance (8 bits, 3 samples, interleaved)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0 : spec.rows, 0 : spec.columns]
    rgb = np.stack(
        [(x * 255 // max(1, spec.columns - 1)), (y * 255 // max(1, spec.rows - 1)), ((x + y) % 256)], axis=-1
    )
    ds = _base_dataset(spec, SECONDARY_CAPTURE, spec.sop_uid(20_000), 1)
    ds.Modality = "OT"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = spec.rows, spec.columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    _set_pixels(ds, rgb.astype(np.uint8)[None], transfer_syntax)
    path = directory / f"{spec.series_key}-rgb.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def demo_cohort(
    directory: str | Path,
    patients: int = 6,
    series_per_patient: int = 1,
    slices: int = 24,
    size: int = 64,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
) -> list[tuple[SeriesSpec, list[Path]]]:
    """A labelled cohort: patient ``k`` has a nodule when ``k`` is odd (label 1), none otherwise."""
    cohort = []
    base = dt.date(2024, 1, 1)
    for patient in range(patients):
        for series in range(series_per_patient):
            spec = SeriesSpec(
                patient_id=f"SYN-{patient:04d}",
                patient_name=f"Synthetic^Patient{patient:04d}",
                study_key=f"study-{patient}",
                series_key=f"p{patient:04d}-s{series}",
                study_date=(base + dt.timedelta(days=patient)).strftime("%Y%m%d"),
                accession_number=f"ACC{patient:04d}",
                series_number=series + 1,
                slices=slices,
                rows=size,
                columns=size,
                nodule=bool(patient % 2),
                orientation=oblique(12.0) if patient % 3 == 2 else AXIAL,
                shuffle_instance_numbers=patient % 2 == 0,
                transfer_syntax=transfer_syntax,
                seed=patient * 31 + series,
            )
            cohort.append((spec, write_series(Path(directory) / spec.series_key, spec)))
    return cohort
