"""Compact per-frame arrays a dataset carries into DataLoader workers.

Extracted once from the Arrow index: numbers as numpy, text as fixed-width bytes or small
dictionaries of codes. No Python object per frame, so forked workers share the pages and
spawned workers receive one pickle of flat arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc

from ..fetch import FrameRef
from ..index import FrameIndex
from ..metadata import PixelDescription


def _codes(index: FrameIndex, name: str) -> tuple[np.ndarray, list[str]]:
    encoded = pc.dictionary_encode(index.table.column(name).fill_null("")).combine_chunks()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32), encoded.dictionary.to_pylist()


class FrameTable:
    """Columns of a :class:`FrameIndex` that items are built from, one entry per frame."""

    def __init__(self, index: FrameIndex) -> None:
        self.size = len(index)
        self.datastore_code, self.datastores = _codes(index, "datastore_id")
        self.syntax_code, self.syntaxes = _codes(index, "stored_transfer_syntax")
        self.photometric_code, self.photometrics = _codes(index, "photometric_interpretation")
        self.image_set_id = index.column("image_set_id")
        self.frame_id = index.column("frame_id")
        self.series_instance_uid = index.column("series_instance_uid")
        self.sop_instance_uid = index.column("sop_instance_uid")
        self.patient_id = index.column("patient_id")
        self.study_instance_uid = index.column("study_instance_uid")
        self.image_set_version = index.column("image_set_version")
        self.frame_number = index.column("frame_number")
        self.slice_index = index.column("slice_index")
        self.slice_count = index.column("slice_count")
        self.rows = index.column("rows")
        self.columns = index.column("columns")
        self.samples_per_pixel = index.column("samples_per_pixel")
        self.bits_allocated = index.column("bits_allocated")
        self.bits_stored = index.column("bits_stored")
        self.pixel_representation = index.column("pixel_representation")
        self.planar_configuration = index.column("planar_configuration")
        self.checksum = index.column("checksum")
        self.reduced_checksums = index.column("reduced_checksums")
        self.rescale_slope = index.column("rescale_slope").astype(np.float64)
        self.rescale_intercept = index.column("rescale_intercept").astype(np.float64)
        self.window_center = index.column("window_center").astype(np.float64)
        self.window_width = index.column("window_width").astype(np.float64)
        self.pixel_spacing_row = index.column("pixel_spacing_row").astype(np.float64)
        self.pixel_spacing_col = index.column("pixel_spacing_col").astype(np.float64)
        self.slice_spacing = index.column("slice_spacing").astype(np.float64)
        self.series_affine = index.column("series_affine")
        self.series_regular = index.column("series_regular")
        self.irregularity_code, self.irregularities = _codes(index, "series_irregularity")
        self.image_position = index.column("image_position")
        self.image_orientation = index.column("image_orientation")

    def __len__(self) -> int:
        return self.size

    def text(self, name: str, row: int) -> str:
        value: bytes = getattr(self, name)[row]
        return value.decode()

    def pixel(self, row: int) -> PixelDescription:
        return PixelDescription(
            rows=int(self.rows[row]),
            columns=int(self.columns[row]),
            samples_per_pixel=max(1, int(self.samples_per_pixel[row])),
            bits_allocated=int(self.bits_allocated[row]) if self.bits_allocated[row] > 0 else 16,
            bits_stored=int(self.bits_stored[row]) if self.bits_stored[row] > 0 else 16,
            pixel_representation=max(0, int(self.pixel_representation[row])),
            photometric_interpretation=self.photometrics[self.photometric_code[row]] or "MONOCHROME2",
            planar_configuration=max(0, int(self.planar_configuration[row])),
        )

    def ref(self, row: int) -> FrameRef:
        checksum = int(self.checksum[row])
        return FrameRef(
            datastore_id=self.datastores[self.datastore_code[row]],
            image_set_id=self.text("image_set_id", row),
            version=int(self.image_set_version[row]),
            frame_id=self.text("frame_id", row),
            stored_transfer_syntax=self.syntaxes[self.syntax_code[row]],
            pixel=self.pixel(row),
            checksum=checksum if checksum >= 0 else None,
            reduced_checksums=tuple(int(c) for c in self.reduced_checksums[row]),
        )

    def photometric(self, row: int) -> str:
        return self.photometrics[self.photometric_code[row]]

    def irregularity(self, row: int) -> str:
        return self.irregularities[self.irregularity_code[row]]

    def syntax(self, row: int) -> str:
        return self.syntaxes[self.syntax_code[row]]

    def meta(self, row: int) -> dict[str, Any]:
        """Identifiers of a frame, as collatable values."""
        return {
            "datastore_id": self.datastores[self.datastore_code[row]],
            "image_set_id": self.text("image_set_id", row),
            "image_set_version": int(self.image_set_version[row]),
            "patient_id": self.text("patient_id", row),
            "study_instance_uid": self.text("study_instance_uid", row),
            "series_instance_uid": self.text("series_instance_uid", row),
            "sop_instance_uid": self.text("sop_instance_uid", row),
            "frame_id": self.text("frame_id", row),
            "frame_number": int(self.frame_number[row]),
            "slice_index": int(self.slice_index[row]),
        }
