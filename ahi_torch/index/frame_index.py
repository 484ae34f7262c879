"""FrameIndex: the columnar, versioned table of frames a dataset is built on.

Stored as an Arrow table (one row per frame, see :mod:`.rows`), saved as Parquet with the
index's provenance in the file metadata. Never a list of dicts: DataLoader workers would touch
every Python object's refcount and copy the index page by page.

>>> index = FrameIndex.load("runs/ct.parquet")
>>> index.version                    # changes when any image set's version changes
'9f2c61...'
>>> ct = index.filter(pc.field("modality") == "CT")
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ConfigError, IndexFormatError
from .columns import FORMAT_VERSION, UPGRADABLE_FORMATS, schema
from .content_digest import content_digest

_META_KEY = b"ahi_torch"
#: The format whose rows :attr:`FrameIndex.version` digests: format 4 changed how text is stored,
#: not what a row holds, so an upgraded index keeps its version (and checkpoints that name it).
CONTENT_FORMAT = "3"
_DIGEST_KEY = b"ahi_torch.sha256"


def _same_type(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Equal types; fixed-size lists compare size and value type (Parquet renames their child)."""
    if pa.types.is_fixed_size_list(expected):
        return (
            pa.types.is_fixed_size_list(actual)
            and actual.list_size == expected.list_size
            and actual.value_type == expected.value_type
        )
    return bool(actual == expected)


#: Columns added since format 3, filled with nulls ("not known") when an older index is loaded.
ADDED_COLUMNS = ("modality_lut",)


def _conformed(table: pa.Table) -> pa.Table:
    """``table`` with plain text columns the schema codes (index format 3, hand-made tables) coded,
    and the columns added since format 3 present (nulls where an older index never recorded them)."""
    for name in ADDED_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, schema().field(name).type))
    for field in schema():
        if field.name not in table.column_names or not pa.types.is_dictionary(field.type):
            continue
        kind = table.schema.field(field.name).type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            position = table.column_names.index(field.name)
            coded = table.column(field.name).cast(pa.string()).dictionary_encode()
            table = table.set_column(position, field.name, coded)
    return table


def _column_bytes(column: pa.ChunkedArray) -> list[bytes]:
    """A column's values and nulls as bytes that do not depend on how Parquet laid them out.

    Coded text is hashed as the text it stands for, so an index digests the same in every format.
    """
    array = column.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_fixed_size_list(array.type):
        array = array.flatten()
    nulls = np.asarray(array.is_null().to_numpy(zero_copy_only=False)).tobytes()
    if pa.types.is_string(array.type) or pa.types.is_binary(array.type):
        offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + len(array) + 1]
        data = array.buffers()[2]
        values = b"" if data is None or len(offsets) == 0 else data.to_pybytes()[offsets[0] : offsets[-1]]
        return [nulls, (offsets - offsets[0]).tobytes(), values]
    if pa.types.is_boolean(array.type):
        return [nulls, np.asarray(array.fill_null(False).to_numpy(zero_copy_only=False)).tobytes()]
    return [nulls, np.asarray(array.fill_null(0).to_numpy(zero_copy_only=False)).tobytes()]


def _digest(info: bytes, table: pa.Table) -> bytes:
    """SHA-256 of the provenance, the column names and every value (pages carry CRC32s of their own too).

    Values are hashed, not Parquet's bytes: a damaged footer can point a column at another
    column's intact pages, which no page checksum notices. Types stay out: Parquet renames list
    children ("item" becomes "element") on the way back; they are checked against the schema.
    """
    sections = ((f"{name}\n", _column_bytes(table.column(name))) for name in table.column_names)
    return content_digest(info, sections).encode()


@dataclass(frozen=True)
class Volume:
    """The rows of one series of one image set, in slice order."""

    image_set_id: str
    series_instance_uid: str
    rows: np.ndarray


class FrameIndex:
    """A frame table plus provenance (data store, searches, build time, extra tags)."""

    def __init__(self, table: pa.Table, info: dict[str, Any] | None = None) -> None:
        table = _conformed(table)
        missing = [name for name in schema().names if name not in table.column_names]
        if missing:
            raise ConfigError(f"not a frame index: missing columns {', '.join(missing[:5])}")
        for field in schema():
            kind = table.schema.field(field.name).type
            if not _same_type(kind, field.type):
                raise ConfigError(f"not a frame index: column {field.name} is {kind}, not {field.type}")
        self.table = table
        self.info: dict[str, Any] = dict(info or {})

    # --- identity -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        return f"FrameIndex({len(self)} frames, {self.image_set_count} image sets, version {self.version[:12]})"

    @property
    def image_set_count(self) -> int:
        return len(pc.unique(self.table.column("image_set_id")))

    @property
    def extra_tags(self) -> list[str]:
        return list(self.info.get("extra_tags", []))

    @property
    def version(self) -> str:
        """A digest of the image set versions and frames in the index: equal digests, equal pixels.

        An image set's frames never change within a version, so (image set, version) pairs plus
        the set of frame IDs identify the content.
        """
        digest = hashlib.sha256(f"ahi_torch-index-{CONTENT_FORMAT}".encode())
        for image_set_id, (version, _) in sorted(self.image_sets().items()):
            digest.update(f"{image_set_id}:{version};".encode())
        frame_ids = self.table.column("frame_id").combine_chunks()
        ordered = frame_ids.take(pc.sort_indices(frame_ids))
        for value in ordered.buffers()[1:]:
            if value is not None:
                digest.update(memoryview(value))
        return digest.hexdigest()[:32]

    # --- columns --------------------------------------------------------------------------------

    def column(self, name: str) -> np.ndarray:
        """A column as numpy: numbers as numbers (NaN for nulls in floats), text as fixed-width bytes.

        Fixed-width byte arrays hold no Python objects, so forked workers never copy them.
        """
        if name not in self.table.column_names:
            raise ConfigError(f"the index has no column {name!r}; columns: {', '.join(self.table.column_names)}")
        column = self.table.column(name).combine_chunks()
        if pa.types.is_dictionary(column.type):  # one bytes value per distinct text, not per row
            codes, values = self.codes(name)
            return np.array([value.encode() for value in values], dtype=np.bytes_)[codes]
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            return np.array(column.fill_null("").to_pylist(), dtype=np.bytes_)
        if pa.types.is_floating(column.type):
            return column.to_numpy(zero_copy_only=False)
        if pa.types.is_integer(column.type):
            return column.fill_null(-1).to_numpy(zero_copy_only=False)
        if pa.types.is_boolean(column.type):
            return column.fill_null(False).to_numpy(zero_copy_only=False)
        if pa.types.is_fixed_size_list(column.type):
            width = column.type.list_size
            flat = column.fill_null([np.nan] * width) if column.null_count else column
            return np.asarray(flat.flatten().to_numpy(zero_copy_only=False)).reshape(-1, width)
        return np.asarray(column.to_pylist(), dtype=object)

    def texts(self, name: str) -> list[str | None]:
        """A text column as Python strings (for building labels and splits, not for workers)."""
        return self.table.column(name).to_pylist()

    def row(self, index: int) -> dict[str, Any]:
        return {k: v[0] for k, v in self.table.slice(index, 1).to_pydict().items()}

    # --- selections -----------------------------------------------------------------------------

    def filter(self, condition: pc.Expression | np.ndarray | pa.Array) -> FrameIndex:
        """Rows matching a pyarrow expression or a boolean mask."""
        if isinstance(condition, pc.Expression):
            table = self.table.filter(condition)
        else:
            table = self.table.filter(pa.array(np.asarray(condition, dtype=bool)))
        return FrameIndex(table, self.info)

    def take(self, rows: np.ndarray | list[int]) -> FrameIndex:
        return FrameIndex(self.table.take(pa.array(np.asarray(rows, dtype=np.int64))), self.info)

    def codes(self, name: str) -> tuple[np.ndarray, list[str]]:
        """A text column as int32 codes into a list of its distinct values (null → "")."""
        column = self.table.column(name).combine_chunks()
        if not pa.types.is_dictionary(column.type):
            column = column.dictionary_encode()
        values = column.dictionary.to_pylist()
        codes = column.indices.fill_null(len(values)).to_numpy(zero_copy_only=False).astype(np.int32)
        return codes, [*values, ""]

    def volumes(self) -> list[Volume]:
        """Row numbers of each (image set, series), ordered by slice index; volumes in index order."""
        if len(self) == 0:
            return []
        image_set_codes, image_sets = self.codes("image_set_id")
        series_codes, series = self.codes("series_instance_uid")
        pairs = image_set_codes.astype(np.int64) * len(series) + series_codes
        _, first, volume_of_row = np.unique(pairs, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))  # volumes in order of first row
        volume_rank = rank[volume_of_row.reshape(-1)]
        order = np.lexsort((np.arange(len(self)), self.column("slice_index"), volume_rank))
        bounds = np.flatnonzero(np.diff(volume_rank[order])) + 1
        volumes = []
        for rows in np.split(order.astype(np.int64), bounds):
            head = int(rows[0])
            volumes.append(Volume(image_sets[image_set_codes[head]], series[series_codes[head]], rows))
        return volumes

    def image_sets(self) -> dict[str, tuple[int, float]]:
        """image set ID → (version, updatedAt) for every image set in the index."""
        grouped = self.table.group_by("image_set_id").aggregate([("image_set_version", "max"), ("updated_at", "max")])
        ids = grouped.column("image_set_id").to_pylist()
        versions = grouped.column("image_set_version_max").to_pylist()
        updated = grouped.column("updated_at_max").to_pylist()
        return {i: (int(v), float(u)) for i, v, u in zip(ids, versions, updated, strict=True)}

    def iter_rows(self, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
        table = self.table.select(columns) if columns else self.table
        for batch in table.to_batches():
            yield from batch.to_pylist()

    def to_pandas(self) -> Any:
        return self.table.to_pandas()

    # --- persistence ----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write Parquet (atomically: a temporary file renamed over the target).

        Every data page carries a CRC32 and the provenance its own SHA-256, both checked by
        :meth:`load`, so a flipped bit never loads as a different frame ID or data store.
        """
        path = Path(path)
        if len(self) == 0 and path.exists():
            raise ConfigError(f"an empty index never replaces the one at {path}; it was left as it was")
        path.parent.mkdir(parents=True, exist_ok=True)
        info = json.dumps({**self.info, "format_version": FORMAT_VERSION, "index_version": self.version})
        metadata = dict(self.table.schema.metadata or {})
        metadata[_META_KEY] = info.encode()
        metadata[_DIGEST_KEY] = _digest(info.encode(), self.table)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # processes saving at once never share one
        pq.write_table(self.table.replace_schema_metadata(metadata), tmp, compression="zstd", write_page_checksum=True)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FrameIndex:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"no index file at {path}")
        try:
            table = pq.read_table(path, page_checksum_verification=True)
            metadata = table.schema.metadata or {}
            raw = metadata.get(_META_KEY)
            digest = metadata.get(_DIGEST_KEY)
            intact = raw is not None and digest is not None and _digest(raw, table) == digest
            info = json.loads(raw) if raw and intact else {}
        except (pa.ArrowException, OSError, ValueError) as error:  # ValueError: names that are not UTF-8
            raise ConfigError(f"{path} is damaged or not a Parquet index ({error}); rebuild it") from None
        if raw is None or digest is None:
            raise ConfigError(f"{path} has no ahi_torch provenance or checksum (damaged, or not an ahi_torch index)")
        if not intact:
            raise ConfigError(f"{path} is damaged: its content does not match its checksum; rebuild it")
        if info.get("format_version", FORMAT_VERSION) not in (FORMAT_VERSION, *UPGRADABLE_FORMATS):
            raise IndexFormatError(
                f"{path} has index format {info['format_version']}; this ahi_torch reads {FORMAT_VERSION} "
                "(rebuild it: ahi-torch index build CONFIG)"
            )
        try:
            return cls(table.replace_schema_metadata({}), info)
        except (ConfigError, pa.ArrowException) as error:
            # The values matched their checksum, so the types were damaged: the checksum leaves the
            # Arrow schema out (see _digest), and a flipped bit there can turn int32 codes into uint32.
            raise ConfigError(f"{path} is damaged: {error}; rebuild it") from None

    def __getstate__(self) -> dict[str, Any]:
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, self.table.schema) as writer:
            writer.write_table(self.table)
        return {"ipc": sink.getvalue(), "info": self.info}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.table = pa.ipc.open_stream(state["ipc"]).read_all()
        self.info = state["info"]

    def summary(self) -> dict[str, Any]:
        """Counts for ``ahi-torch index show``."""
        table = self.table

        def distinct(name: str) -> int:
            return len(pc.unique(table.column(name).drop_null()))

        modality_counts = {
            str(row["values"]): int(row["counts"]) for row in pc.value_counts(table.column("modality")).to_pylist()
        }
        return {
            "frames": len(self),
            "image_sets": distinct("image_set_id"),
            "patients": distinct("patient_id"),
            "studies": distinct("study_instance_uid"),
            "series": distinct("series_instance_uid"),
            "instances": distinct("sop_instance_uid"),
            "modalities": modality_counts,
            "transfer_syntaxes": {
                str(row["values"]): int(row["counts"])
                for row in pc.value_counts(table.column("stored_transfer_syntax")).to_pylist()
            },
            "datastore_id": self.info.get("datastore_id"),
            "built_at": self.info.get("built_at"),
            "version": self.version,
            "bytes_in_memory": table.nbytes,
        }


def new_info(
    datastore_id: str, searches: list[Any], extra_tags: list[str], include_non_primary: bool
) -> dict[str, Any]:
    return {
        "datastore_id": datastore_id,
        "searches": searches,
        "extra_tags": extra_tags,
        "include_non_primary": include_non_primary,
        "built_at": time.time(),
    }
