"""Columns of the frame index and how an image set's metadata becomes rows.

One row per frame. Frames of a series get ``slice_index`` in geometric order (see
:mod:`ahi_torch.metadata.geometry`): every frame is a slice, a frame of an enhanced multi-frame
instance placed by the position its per-frame functional groups give it (:class:`FrameSlice`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..metadata import ImageSetMetadata, InstanceMetadata, SeriesGeometry, SeriesMetadata, series_geometry
from ..metadata import values as v
from ..metadata.document import FrameInfo

# 2: affines index (slice, row, column); per-frame position/orientation; series regularity.
# 3: reduced_checksums, the CRC32s AHI lists for reduced-resolution decodes.
# 4: repeated text (IDs of image sets, patients, studies, series; syntaxes...) dictionary-encoded.
# 5: modality_lut, whether an instance maps stored values through a Modality LUT Sequence.
FORMAT_VERSION = "5"
#: Older formats :meth:`FrameIndex.load` upgrades in memory (plain text coded; columns added since as nulls).
UPGRADABLE_FORMATS = ("3", "4")
#: Reduced resolutions whose checksum the index keeps (``reduced_checksums[k - 1]`` for ``reduce=k``).
MAX_REDUCE = 4

#: Text that repeats across frames (one value per series, study, patient...): stored once per
#: distinct value plus a 4-byte code per frame. Only the SOP instance UID and the frame ID are
#: unique per frame and stay plain text.
CODED_TEXT = pa.dictionary(pa.int32(), pa.string())

COLUMNS: dict[str, pa.DataType] = {
    "datastore_id": CODED_TEXT,
    "image_set_id": CODED_TEXT,
    "image_set_version": pa.int32(),
    "updated_at": pa.float64(),
    "is_primary": pa.bool_(),
    "patient_id": CODED_TEXT,
    "patient_sex": CODED_TEXT,
    "patient_birth_date": CODED_TEXT,
    "study_instance_uid": CODED_TEXT,
    "study_date": CODED_TEXT,
    "study_description": CODED_TEXT,
    "accession_number": CODED_TEXT,
    "series_instance_uid": CODED_TEXT,
    "series_number": pa.int32(),
    "series_description": CODED_TEXT,
    "modality": CODED_TEXT,
    "body_part": CODED_TEXT,
    "sop_instance_uid": pa.string(),
    "sop_class_uid": CODED_TEXT,
    "instance_number": pa.int32(),
    "frame_number": pa.int32(),
    "frame_id": pa.string(),
    "frames_in_instance": pa.int32(),
    "slice_index": pa.int32(),
    "slice_count": pa.int32(),
    "slice_position": pa.float64(),
    "stored_transfer_syntax": CODED_TEXT,
    "rows": pa.int32(),
    "columns": pa.int32(),
    "samples_per_pixel": pa.int16(),
    "bits_allocated": pa.int16(),
    "bits_stored": pa.int16(),
    "pixel_representation": pa.int16(),
    "photometric_interpretation": CODED_TEXT,
    "planar_configuration": pa.int16(),
    "rescale_slope": pa.float64(),
    "rescale_intercept": pa.float64(),
    "modality_lut": pa.bool_(),
    "window_center": pa.float64(),
    "window_width": pa.float64(),
    "pixel_spacing_row": pa.float64(),
    "pixel_spacing_col": pa.float64(),
    "slice_spacing": pa.float64(),
    "series_affine": pa.list_(pa.float64(), 16),
    "series_regular": pa.bool_(),
    "series_irregularity": CODED_TEXT,
    "image_position": pa.list_(pa.float64(), 3),
    "image_orientation": pa.list_(pa.float64(), 6),
    "checksum": pa.int64(),
    "reduced_checksums": pa.list_(pa.int64(), MAX_REDUCE),
    "frame_size": pa.int64(),
}


#: Columns holding CRC32s, -1 where AHI lists none.
CHECKSUM_COLUMNS = ("checksum", "reduced_checksums")


def reduced_checksums(frame: FrameInfo, rows: int | None, columns: int | None) -> list[int]:
    """AHI's CRC32 for each ``reduce=k`` decode (k = 1..MAX_REDUCE) of a frame, -1 where none is listed.

    AHI lists checksums by decoded size (``PixelDataChecksumFromBaseToFullResolution``); a decode
    skipping k levels is ceil(size / 2**k) on each side.
    """
    by_size = {(c.width, c.height): c.checksum for c in frame.checksums}
    found = []
    for k in range(1, MAX_REDUCE + 1):
        size = (-(-(columns or 0) // 2**k), -(-(rows or 0) // 2**k))
        found.append(by_size.get(size, -1) if rows and columns else -1)
    return found


def epoch_seconds(value: Any) -> float:
    """Seconds since the epoch from a datetime (boto3) or a number; 0 when absent."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return float(value or 0.0)


def empty_columns(extra_tags: Sequence[str] = ()) -> dict[str, list[Any]]:
    return {name: [] for name in [*COLUMNS, *extra_tags]}


def schema(extra_tags: Sequence[str] = ()) -> pa.Schema:
    return pa.schema(
        [pa.field(name, kind) for name, kind in COLUMNS.items()] + [pa.field(t, CODED_TEXT) for t in extra_tags]
    )


def _tag_text(levels: list[Mapping[str, Any]], keyword: str) -> str | None:
    value = v.lookup(levels, keyword)
    if isinstance(value, list):
        parts = [str(item).strip(" \x00") for item in value if not isinstance(item, dict)]
        return "\\".join(parts) or None
    if isinstance(value, (dict, bool)):
        return None
    return v.text(value)


@dataclass(frozen=True)
class FrameSlice:
    """One frame as a slice of its series: single-frame instances and the frames of multi-frame ones alike.

    A multi-frame (enhanced) instance keeps each frame's position, and may keep its orientation
    and spacing, in its per-frame functional groups; the instance's values apply where it does not.
    """

    instance: InstanceMetadata
    frame: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    instance_number: int | None

    @classmethod
    def of(cls, instance: InstanceMetadata, frame: int) -> FrameSlice:
        info = instance.frames[frame]
        single = len(instance.frames) == 1
        number = instance.instance_number
        return cls(
            instance,
            frame,
            info.position or (instance.position if single else None),
            info.orientation or instance.orientation,
            info.pixel_spacing or instance.pixel_spacing,
            info.slice_thickness or instance.slice_thickness,
            # Frames of one instance follow their frame numbers, instances their InstanceNumber.
            None if number is None and not single else (number or 0) * 1_000_000 + frame,
        )


def _ordered_frames(series: SeriesMetadata) -> tuple[list[tuple[InstanceMetadata, int, float | None]], SeriesGeometry]:
    """(instance, frame index, slice position) in stacking order, and the series' geometry.

    Every frame is a slice: a single-frame instance at its ImagePositionPatient, a frame of an
    enhanced multi-frame instance at the position its functional groups give it.
    """
    slices = [FrameSlice.of(instance, n) for instance in series.instances for n in range(len(instance.frames))]
    geometry = series_geometry(slices)
    positions = geometry.positions or (None,) * len(geometry.order)
    ordered = [(slices[i].instance, slices[i].frame, positions[k]) for k, i in enumerate(geometry.order)]
    return ordered, geometry


def append_rows(
    columns: dict[str, list[Any]],
    summary: Mapping[str, Any],
    image_set: ImageSetMetadata,
    datastore_id: str,
    extra_tags: Sequence[str] = (),
) -> int:
    """Append one row per frame of ``image_set``; returns how many rows were added.

    Values shared by a series are computed once and repeated (an index build runs this for
    millions of frames).
    """
    patient, study = image_set.patient, image_set.study
    image_set_values = {
        "datastore_id": datastore_id,
        "image_set_id": image_set.image_set_id,
        "image_set_version": int(summary.get("version") or 0),
        "updated_at": epoch_seconds(summary.get("updatedAt")),
        "is_primary": bool(summary.get("isPrimary", True)),
        "patient_id": v.text(patient.get("PatientID")),
        "patient_sex": v.text(patient.get("PatientSex")),
        "patient_birth_date": v.text(patient.get("PatientBirthDate")),
        "study_instance_uid": v.text(study.get("StudyInstanceUID")),
        "study_date": v.text(study.get("StudyDate")),
        "study_description": v.text(study.get("StudyDescription")),
        "accession_number": v.text(study.get("AccessionNumber")),
    }
    outer = [study, patient] if extra_tags else []
    return sum(_append_series(columns, series, image_set_values, extra_tags, outer) for series in image_set.series)


def _append_series(
    columns: dict[str, list[Any]],
    series: SeriesMetadata,
    image_set_values: dict[str, Any],
    extra_tags: Sequence[str],
    outer: list[Mapping[str, Any]],
) -> int:
    """Append the rows of one series, in slice order; ``outer`` are the study and patient levels for extra tags."""
    ordered, geometry = _ordered_frames(series)
    affine = [float(x) for x in geometry.affine.reshape(-1)] if geometry.affine is not None else None
    series_values = {
        **image_set_values,
        "series_instance_uid": series.series_instance_uid,
        "series_number": series.series_number,
        "series_description": v.text(series.dicom.get("SeriesDescription")),
        "modality": series.modality,
        "body_part": v.text(series.dicom.get("BodyPartExamined")),
        "slice_count": len(ordered),
        "slice_spacing": geometry.spacing[0],
        "series_affine": affine,
        "series_regular": geometry.regular,
        "series_irregularity": geometry.irregularity or None,
    }
    for name, value in series_values.items():
        columns[name].extend([value] * len(ordered))
    instance_values: dict[str, Any] = {}
    last_instance: InstanceMetadata | None = None
    for slice_index, (instance, frame_index, position) in enumerate(ordered):
        if instance is not last_instance:
            instance_values = _instance_values(instance)
            last_instance = instance
        frame = instance.frames[frame_index]
        row = {
            **instance_values,
            **_frame_overrides(frame),
            "frame_number": frame.number,
            "frame_id": frame.id,
            "slice_index": slice_index,
            "slice_position": position,
            "checksum": frame.full_checksum,
            "reduced_checksums": reduced_checksums(frame, instance_values["rows"], instance_values["columns"]),
            "frame_size": frame.size,
        }
        if extra_tags:
            levels = [instance.dicom, series.dicom, *outer]
            for keyword in extra_tags:
                row[keyword] = _tag_text(levels, keyword)
        for name, value in row.items():
            columns[name].append(value)
    return len(ordered)


def _frame_overrides(frame: FrameInfo) -> dict[str, Any]:
    """The values a frame's own functional groups set (enhanced multi-frame instances)."""
    found = {
        "rescale_slope": frame.rescale_slope if frame.rescale_slope else None,
        "rescale_intercept": frame.rescale_intercept,
        "window_center": frame.window_center,
        "window_width": frame.window_width,
        "image_position": list(frame.position) if frame.position else None,
        "image_orientation": list(frame.orientation) if frame.orientation else None,
        "pixel_spacing_row": frame.pixel_spacing[0] if frame.pixel_spacing else None,
        "pixel_spacing_col": frame.pixel_spacing[1] if frame.pixel_spacing else None,
    }
    return {name: value for name, value in found.items() if value is not None}


def _instance_values(instance: InstanceMetadata) -> dict[str, Any]:
    """The columns of an instance's rows that all its frames share."""
    pixel = instance.pixel
    return {
        "sop_instance_uid": instance.sop_instance_uid,
        "sop_class_uid": instance.sop_class_uid,
        "instance_number": instance.instance_number,
        "frames_in_instance": len(instance.frames),
        "stored_transfer_syntax": instance.stored_transfer_syntax,
        "rows": pixel.rows if pixel else None,
        "columns": pixel.columns if pixel else None,
        "samples_per_pixel": pixel.samples_per_pixel if pixel else None,
        "bits_allocated": pixel.bits_allocated if pixel else None,
        "bits_stored": pixel.bits_stored if pixel else None,
        "pixel_representation": pixel.pixel_representation if pixel else None,
        "photometric_interpretation": pixel.photometric_interpretation if pixel else None,
        "planar_configuration": pixel.planar_configuration if pixel else None,
        "rescale_slope": instance.rescale_slope,
        "rescale_intercept": instance.rescale_intercept,
        "modality_lut": "ModalityLUTSequence" in instance.dicom,
        "window_center": instance.window_center,
        "window_width": instance.window_width,
        "pixel_spacing_row": instance.pixel_spacing[0] if instance.pixel_spacing else None,
        "pixel_spacing_col": instance.pixel_spacing[1] if instance.pixel_spacing else None,
        "image_position": list(instance.position) if instance.position and len(instance.frames) == 1 else None,
        "image_orientation": list(instance.orientation) if instance.orientation else None,
    }


class RowBuffer:
    """Rows of many image sets, held as Arrow record batches of ``chunk`` rows.

    Python lists hold one object per value (about 2 kB per frame); flushing them into Arrow
    every ``chunk`` rows keeps an index build of millions of frames within a few hundred bytes
    per frame.

    >>> rows = RowBuffer(extra_tags=["KVP"])
    >>> rows.append(summary, ImageSetMetadata.parse(document), datastore_id)
    64
    >>> table = rows.table()
    """

    def __init__(self, extra_tags: Sequence[str] = (), chunk: int = 65536) -> None:
        self.extra_tags = list(extra_tags)
        self.chunk = chunk
        self._schema = schema(extra_tags)
        self._columns = empty_columns(extra_tags)
        self._pending = 0
        self._batches: list[pa.RecordBatch] = []

    def append(self, summary: Mapping[str, Any], image_set: ImageSetMetadata, datastore_id: str) -> int:
        added = append_rows(self._columns, summary, image_set, datastore_id, self.extra_tags)
        self._pending += added
        if self._pending >= self.chunk:
            self._flush()
        return added

    def _flush(self) -> None:
        if self._pending:
            self._batches.append(pa.RecordBatch.from_pydict(self._columns, schema=self._schema))
            self._columns = empty_columns(self.extra_tags)
            self._pending = 0

    def table(self) -> pa.Table:
        """Every row so far as one table, one chunk per column, one dictionary per coded column."""
        self._flush()
        return pa.Table.from_batches(self._batches, schema=self._schema).combine_chunks()


def _sort_key(column: pa.ChunkedArray) -> pa.Array:
    """A key that sorts like ``column``: coded text becomes the rank of its value (nulls last).

    Arrow sorts tables by plain columns only; a dictionary's codes follow insertion order, so
    they are replaced by the rank of the text they stand for.
    """
    array = column.combine_chunks()
    if not pa.types.is_dictionary(array.type):
        return array
    order = np.asarray(pc.sort_indices(array.dictionary), dtype=np.int64)
    rank = np.empty(len(order) + 1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    rank[-1] = len(order)  # null: after every value, as Arrow places them
    codes = np.asarray(array.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    return pa.array(rank[codes])


def sort_rows(table: pa.Table, keys: Sequence[tuple[str, str]]) -> pa.Table:
    """``table.sort_by(keys)`` for tables with dictionary-coded text columns."""
    if table.num_rows == 0:
        return table
    keyed = pa.table({f"k{i}": _sort_key(table.column(name)) for i, (name, _) in enumerate(keys)})
    order = pc.sort_indices(keyed, sort_keys=[(f"k{i}", how) for i, (_, how) in enumerate(keys)])
    return table.take(order)
