"""The per-frame columns a dataset carries into DataLoader workers, shared by every process of a node.

Extracted once from the Arrow index into a :class:`~ahi_torch.index.shared_table.SharedTable`:
memory-mapped Arrow files, one per content, that every rank and worker of a node maps
read-only. No Python object per frame, and no copy per process: spawned workers receive the
files' path, forked ones the mapping.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..fetch import FrameRef
from ..index import FrameIndex
from ..index.columns import MAX_REDUCE
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
#: A numeric column's values: ``[row]`` a value, ``[rows]`` an array (see :meth:`SharedTable.numbers`).
NumberColumn = Any
#: What an item's ``meta`` holds, in order (text and numeric columns).
META_COLUMNS = (
    "datastore_id",
    "image_set_id",
    "image_set_version",
    "patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "frame_id",
    "frame_number",
    "slice_index",
)


class FrameTable:
    """Columns of a :class:`FrameIndex` that items are built from, one entry per frame.

    >>> table = FrameTable(index)            # maps <tmp>/ahi_torch-<uid>/tables/t-<sha256>
    >>> table.rows[0], table.text("frame_id", 0), table.ref(0)

    The numeric columns are the attributes below (:data:`NUMBER_COLUMNS` lists them), each read as
    ``table.<name>[row]`` or ``table.<name>[rows]`` from the node's mapped files; ``label`` holds the
    resolved labels when the dataset has them, else None.
    """

    image_set_version: NumberColumn
    frame_number: NumberColumn
    slice_index: NumberColumn
    slice_count: NumberColumn
    rows: NumberColumn
    columns: NumberColumn
    samples_per_pixel: NumberColumn
    bits_allocated: NumberColumn
    bits_stored: NumberColumn
    pixel_representation: NumberColumn
    planar_configuration: NumberColumn
    checksum: NumberColumn
    reduced_checksums: NumberColumn
    rescale_slope: NumberColumn
    rescale_intercept: NumberColumn
    window_center: NumberColumn
    window_width: NumberColumn
    pixel_spacing_row: NumberColumn
    pixel_spacing_col: NumberColumn
    slice_spacing: NumberColumn
    series_affine: NumberColumn
    series_regular: NumberColumn
    image_position: NumberColumn
    image_orientation: NumberColumn
    label: NumberColumn | None

    def __init__(
        self, index: FrameIndex, directory: str | Path | None = None, labels: np.ndarray | None = None
    ) -> None:
        table, columns = index.table, [*TEXT_COLUMNS, *NUMBER_COLUMNS]
        if labels is not None:  # one per row: shared like the rest, not copied into every worker
            table, columns = table.append_column(LABEL, pa.array(np.asarray(labels))), [*columns, LABEL]
        self.shared = SharedTable.create(table, columns, directory)
        self.size = len(self.shared)
        self._map_columns()

    def _map_columns(self) -> None:
        """This process's views of the numeric columns, looked up once."""
        for name in NUMBER_COLUMNS:
            setattr(self, name, self.shared.numbers(name))
        self.label = self.shared.numbers(LABEL) if LABEL in self.shared.encodings else None

    def __getstate__(self) -> dict[str, Any]:
        return {"shared": self.shared, "size": self.size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.shared, self.size = state["shared"], state["size"]
        self._map_columns()

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes of the mapped files: what the whole node holds for this table."""
        return self.shared.nbytes

    def text(self, name: str, row: int) -> str:
        return self.shared.text(name, row)

    def strings(self, name: str, rows: np.ndarray) -> list[str]:
        """Values of a text column at ``rows`` as str, the column read once."""
        return self.shared.strings(name, rows)

    def texts(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Values of a text column at ``rows`` as fixed-width bytes."""
        return self.shared.texts(name, rows)

    def pixels(self, rows: np.ndarray) -> list[PixelDescription]:
        """The pixel description of each row; rows that describe their pixels alike share one object."""
        rows = np.asarray(rows, dtype=np.int64)
        fields = zip(
            np.asarray(self.rows[rows]).tolist(),
            np.asarray(self.columns[rows]).tolist(),
            np.asarray(self.samples_per_pixel[rows]).tolist(),
            np.asarray(self.bits_allocated[rows]).tolist(),
            np.asarray(self.bits_stored[rows]).tolist(),
            np.asarray(self.pixel_representation[rows]).tolist(),
            self.strings("photometric_interpretation", rows),
            np.asarray(self.planar_configuration[rows]).tolist(),
            strict=True,
        )
        return [_pixel_description(*values) for values in fields]

    def pixel(self, row: int) -> PixelDescription:
        return self.pixels(np.array([row]))[0]

    def refs(self, rows: np.ndarray) -> list[FrameRef]:
        """What the fetcher needs for each row's frame, each column read once for all ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        text = self.strings
        checksums = np.asarray(self.checksum[rows]).tolist()
        return [
            FrameRef(
                datastore_id=datastore_id,
                image_set_id=image_set_id,
                version=version,
                frame_id=frame_id,
                stored_transfer_syntax=syntax,
                pixel=pixel,
                checksum=checksum if checksum >= 0 else None,
                reduced_checksums=tuple(reduced),
            )
            for datastore_id, image_set_id, version, frame_id, syntax, pixel, checksum, reduced in zip(
                text("datastore_id", rows),
                text("image_set_id", rows),
                np.asarray(self.image_set_version[rows]).tolist(),
                text("frame_id", rows),
                text("stored_transfer_syntax", rows),
                self.pixels(rows),
                checksums,
                np.asarray(self.reduced_checksums[rows]).reshape(len(rows), MAX_REDUCE).tolist(),
                strict=True,
            )
        ]

    def ref(self, row: int) -> FrameRef:
        return self.refs(np.array([row]))[0]

    def irregularity(self, row: int) -> str:
        return self.text("series_irregularity", row)

    def metas(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """Identifiers of each row's frame, as collatable values, each column read once for all ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        columns = {
            name: self.strings(name, rows) if name in TEXT_COLUMNS else np.asarray(getattr(self, name)[rows]).tolist()
            for name in META_COLUMNS
        }
        return [{name: columns[name][position] for name in META_COLUMNS} for position in range(len(rows))]

    def meta(self, row: int) -> dict[str, Any]:
        """Identifiers of one frame (see :meth:`metas`)."""
        return self.metas(np.array([row]))[0]


@functools.lru_cache(maxsize=4096)
def _pixel_description(
    rows: int,
    columns: int,
    samples_per_pixel: int,
    bits_allocated: int,
    bits_stored: int,
    pixel_representation: int,
    photometric: str,
    planar_configuration: int,
) -> PixelDescription:
    # The index's stand-ins (0, -1, "") for values an instance leaves out become DICOM's defaults.
    return PixelDescription(
        rows=int(rows),
        columns=int(columns),
        samples_per_pixel=max(1, int(samples_per_pixel)),
        bits_allocated=int(bits_allocated) if bits_allocated > 0 else 16,
        bits_stored=int(bits_stored) if bits_stored > 0 else 16,
        pixel_representation=max(0, int(pixel_representation)),
        photometric_interpretation=photometric or "MONOCHROME2",
        planar_configuration=max(0, int(planar_configuration)),
    )


#: Numeric columns items are built from: :class:`FrameTable`'s column attributes, in their order.
NUMBER_COLUMNS = tuple(name for name in FrameTable.__annotations__ if name != LABEL)
