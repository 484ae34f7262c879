"""The per-frame columns a dataset carries into DataLoader workers, shared by every process of a node.

Extracted once from the Arrow index into a :class:`~ahi_torch.index.shared_table.SharedTable`:
memory-mapped Arrow files, one per content, that every rank and worker of a node maps
read-only. No Python object per frame, and no copy per process: spawned workers receive the
files' path, forked ones the mapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..fetch import FrameRef
from ..index import FrameIndex
from ..index.shared_table import SharedTable
from ..metadata import PixelDescription

#: Text columns items are built from.
TEXT_COLUMNS = (
    "datastore_id",
    "image_set_id",
    "frame_id",
    "series_instance_uid",
    "sop_instance_uid",
    "patient_id",
    "study_instance_uid",
    "stored_transfer_syntax",
    "photometric_interpretation",
    "series_irregularity",
)
#: The column holding resolved labels (class indices or values), when a dataset has them.
LABEL = "label"
#: Numeric columns items are built from, read as ``table.<name>[row]`` or ``table.<name>[rows]``.
NUMBER_COLUMNS = (
    "image_set_version",
    "frame_number",
    "slice_index",
    "slice_count",
    "rows",
    "columns",
    "samples_per_pixel",
    "bits_allocated",
    "bits_stored",
    "pixel_representation",
    "planar_configuration",
    "checksum",
    "reduced_checksums",
    "rescale_slope",
    "rescale_intercept",
    "window_center",
    "window_width",
    "pixel_spacing_row",
    "pixel_spacing_col",
    "slice_spacing",
    "series_affine",
    "series_regular",
    "image_position",
    "image_orientation",
)


class FrameTable:
    """Columns of a :class:`FrameIndex` that items are built from, one entry per frame.

    >>> table = FrameTable(index)            # maps <tmp>/ahi_torch-<uid>/tables/t-<sha256>
    >>> table.rows[0], table.text("frame_id", 0), table.ref(0)
    """

    def __init__(
        self, index: FrameIndex, directory: str | Path | None = None, labels: np.ndarray | None = None
    ) -> None:
        table, columns = index.table, [*TEXT_COLUMNS, *NUMBER_COLUMNS]
        if labels is not None:  # one per row: shared like the rest, not copied into every worker
            table, columns = table.append_column(LABEL, pa.array(np.asarray(labels))), [*columns, LABEL]
        self.shared = SharedTable.create(table, columns, directory)
        self.size = len(self.shared)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not attributes: the numeric columns.
        if (name in NUMBER_COLUMNS or name == LABEL) and "shared" in self.__dict__:
            column = self.shared.numbers(name)
            self.__dict__[name] = column  # this process's view, looked up once
            return column
        raise AttributeError(name)

    def __getstate__(self) -> dict[str, Any]:
        return {"shared": self.shared, "size": self.size}

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes of the mapped files: what the whole node holds for this table."""
        return self.shared.nbytes

    def text(self, name: str, row: int) -> str:
        return self.shared.text(name, row)

    def texts(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Values of a text column at ``rows`` as fixed-width bytes."""
        return self.shared.texts(name, rows)

    def pixel(self, row: int) -> PixelDescription:
        return PixelDescription(
            rows=int(self.rows[row]),
            columns=int(self.columns[row]),
            samples_per_pixel=max(1, int(self.samples_per_pixel[row])),
            bits_allocated=int(self.bits_allocated[row]) if self.bits_allocated[row] > 0 else 16,
            bits_stored=int(self.bits_stored[row]) if self.bits_stored[row] > 0 else 16,
            pixel_representation=max(0, int(self.pixel_representation[row])),
            photometric_interpretation=self.photometric(row) or "MONOCHROME2",
            planar_configuration=max(0, int(self.planar_configuration[row])),
        )

    def ref(self, row: int) -> FrameRef:
        checksum = int(self.checksum[row])
        return FrameRef(
            datastore_id=self.text("datastore_id", row),
            image_set_id=self.text("image_set_id", row),
            version=int(self.image_set_version[row]),
            frame_id=self.text("frame_id", row),
            stored_transfer_syntax=self.syntax(row),
            pixel=self.pixel(row),
            checksum=checksum if checksum >= 0 else None,
            reduced_checksums=tuple(int(c) for c in self.reduced_checksums[row]),
        )

    def photometric(self, row: int) -> str:
        return self.text("photometric_interpretation", row)

    def irregularity(self, row: int) -> str:
        return self.text("series_irregularity", row)

    def syntax(self, row: int) -> str:
        return self.text("stored_transfer_syntax", row)

    def meta(self, row: int) -> dict[str, Any]:
        """Identifiers of a frame, as collatable values."""
        return {
            "datastore_id": self.text("datastore_id", row),
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
