"""SharedTable: the index columns DataLoader workers read, in memory-mapped Arrow files shared by a node.

A frame index holds ~50 columns and several hundred bytes per frame; every worker holding its
own copy multiplies that by the workers and ranks of a node. A SharedTable keeps only the
columns a dataset reads and lays them out so that a CT archive costs tens of bytes per frame:

- **Per series, not per frame.** A column whose value never changes within a series (the image
  set, the transfer syntax, rows and columns, the series affine, usually the rescale) is stored
  once per series in ``series.arrow``; ``frames.arrow`` holds a series code per frame plus the
  columns that do change (frame ID, SOP instance UID, slice index, position, checksums). The
  split is decided from the data, column by column, so a PET series whose rescale slope
  changes per slice keeps it per frame.
- **Narrow values** (the column codec, :mod:`.column_codec`). Text is dictionary-coded; integers
  take the smallest type that holds them; 32-hex-digit frame IDs are 16 bytes; a UID is a coded
  stem plus its last number; a CRC32 is 4 bytes plus a present flag (usually per series).
- **Mapped, not copied.** The files are Arrow IPC, uncompressed, written once per content under
  a name that is the SHA-256 of what they hold, in a node-local directory. Every process that
  opens them (each rank, each DataLoader worker, forked or spawned) maps the same pages of the
  page cache read-only; pickling a SharedTable sends its path.

>>> shared = SharedTable.create(index.table, ["image_set_id", "frame_id", "rows"], "/tmp/tables")
>>> shared.text("frame_id", 0), shared.numbers("rows")[0]
('1b9d…', 512)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError
from .column_codec import (
    DIGIT_PAIRS,
    Checksums,
    Column,
    StoredArray,
    Text,
    constant_within,
    content_buffers,
    encode_column,
    narrow,
    numpy_view,
    to_arrow,
)
from .content_digest import content_digest

#: Bump when the layout below changes: tables of another layout get other names.
LAYOUT = "1"
#: Table directories unused for this long are removed by the next :meth:`SharedTable.create` in
#: the same root (only directories this module made: ``t-<sha256>`` with a ``layout`` file).
STALE_AFTER_S = 3 * 24 * 3600
_SERIES = "__series"
_FILES = ("frames.arrow", "series.arrow")


def default_directory() -> Path:
    """``$AHI_TORCH_TABLE_DIR``, else ``<tmp>/ahi_torch-<uid>/tables``: node-local, shared by its ranks."""
    configured = os.environ.get("AHI_TORCH_TABLE_DIR")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"ahi_torch-{os.getuid()}" / "tables"


def _digest(tables: dict[str, pa.Table], encodings: dict[str, str]) -> str:
    """The shared table's name: its layout, encodings, and every file's mapped buffers."""
    header = f"ahi_torch-shared-table-{LAYOUT}\n{json.dumps(encodings, sort_keys=True)}".encode()
    return content_digest(header, _sections(tables))


def _sections(tables: dict[str, pa.Table]) -> Iterator[tuple[str, list[np.ndarray]]]:
    for file_name, table in sorted(tables.items()):
        yield f"{file_name}:{table.num_rows}", []
        for name in table.column_names:
            column = table.column(name)
            array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
            yield f"{name}:{array.type}", content_buffers(array)


def _write(directory: Path, tables: dict[str, pa.Table], encodings: dict[str, str]) -> None:
    """Both files under a temporary name, renamed into place: readers see all of it or nothing."""
    # Private, like the frame cache: the tables hold patient and study IDs. (mkdtemp makes each
    # table's own folder 0o700 whoever made the root.)
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".t-", dir=directory.parent))
    try:
        for file_name, table in tables.items():
            metadata = {b"encodings": json.dumps(encodings, sort_keys=True).encode()}
            schema = table.schema.with_metadata(metadata)
            with pa.OSFile(str(staging / file_name), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                writer.write_table(table, max_chunksize=max(1, table.num_rows))
        (staging / "layout").write_text(LAYOUT)
        try:
            staging.rename(directory)
        except OSError:  # another rank of the node wrote the same content first
            if not directory.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prune(root: Path, keep: Path) -> None:
    """Remove table directories of this module unopened for :data:`STALE_AFTER_S` and open nowhere.

    Every process that opens a table holds a shared lock on its ``layout`` file, so a table a
    running job still uses (a week-long run, workers spawned again each epoch) is never removed.
    """
    cutoff = time.time() - STALE_AFTER_S
    for entry in root.glob("t-*"):
        layout = entry / "layout"
        try:
            if entry == keep or not layout.exists() or layout.stat().st_mtime >= cutoff:
                continue
            fd = os.open(layout, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while any process holds the table
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue
        finally:
            os.close(fd)


class SharedTable:
    """Columns of a frame index, memory-mapped from a node-local directory; see the module docstring."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            # Held for this object's life (and by forked children): _prune leaves a held table alone.
            self._hold: int | None = os.open(self.directory / "layout", os.O_RDONLY)
        except FileNotFoundError:
            raise ConfigError(f"no shared table at {self.directory} (it was removed; rebuild the dataset)") from None
        fcntl.flock(self._hold, fcntl.LOCK_SH)
        with contextlib.suppress(OSError):  # a read-only table is still readable
            os.utime(self.directory / "layout")  # last opened: what _prune reads
        self._tables = {name: self._map(name) for name in _FILES}
        frames, series = self._tables["frames.arrow"], self._tables["series.arrow"]
        self.encodings: dict[str, str] = json.loads((frames.schema.metadata or {}).get(b"encodings", b"{}"))
        self._size = frames.num_rows
        self._series_code = numpy_view(frames.column(_SERIES).chunk(0)) if frames.num_rows else np.zeros(0, np.int32)
        self._parts: dict[str, tuple[np.ndarray, Text | None, bool]] = {}
        for table, per_series in ((frames, False), (series, True)):
            for name in table.column_names:
                if name == _SERIES:
                    continue
                column = table.column(name)
                array = column.chunk(0) if column.num_chunks else column.combine_chunks()  # empty: typed, no chunk
                if pa.types.is_dictionary(array.type):
                    self._parts[name] = (numpy_view(array.indices), Text(array.dictionary), per_series)
                else:
                    self._parts[name] = (numpy_view(array), None, per_series)
        # One view per part, made here: items look several up per frame.
        self._views = {
            name: Column(values, self._series_code if per_series else None)
            for name, (values, _, per_series) in self._parts.items()
        }

    def _map(self, file_name: str) -> pa.Table:
        source = pa.memory_map(str(self.directory / file_name), "r")
        return pa.ipc.open_file(source).read_all()

    # --- building -------------------------------------------------------------------------------

    @classmethod
    def create(cls, table: pa.Table, columns: Sequence[str], directory: str | Path | None = None) -> SharedTable:
        """Encode ``columns`` of ``table`` (a frame index's), write them once per content, and map them.

        Series are the (``image_set_id``, ``series_instance_uid``) pairs, which ``table`` must hold.
        """
        root = Path(directory) if directory is not None else default_directory()
        missing = [c for c in ("image_set_id", "series_instance_uid", *columns) if c not in table.column_names]
        if missing:
            raise ConfigError(f"the index has no column {missing[0]!r}")
        size = table.num_rows
        if size:
            image_sets, series = (
                table.column(name).combine_chunks().cast(pa.string()).fill_null("")
                for name in ("image_set_id", "series_instance_uid")
            )
            pair = pc.binary_join_element_wise(image_sets, series, "/")
            series_code = np.asarray(pair.dictionary_encode().indices.to_numpy(zero_copy_only=False))
        else:
            series_code = np.zeros(0, dtype=np.int64)
        order = np.argsort(series_code, kind="stable")
        sorted_codes = series_code[order]
        starts = np.flatnonzero(np.diff(sorted_codes)) + 1
        firsts = order[np.concatenate([[0], starts])] if size else np.zeros(0, dtype=np.int64)
        per_frame: dict[str, pa.Array] = {_SERIES: pa.array(narrow(series_code.astype(np.int64)))}
        per_series: dict[str, pa.Array] = {}
        encodings: dict[str, str] = {}
        for name in dict.fromkeys(columns):
            encoding, parts = encode_column(name, table.column(name).combine_chunks())
            encodings[name] = encoding
            for part_name, part in parts.items():
                if size and constant_within(part.values, order, starts):
                    per_series[part_name] = to_arrow(StoredArray(part.values[firsts], part.dictionary))
                else:
                    per_frame[part_name] = to_arrow(part)
        if not per_series:  # a table needs a column to know its length
            per_series["_"] = pa.array(np.zeros(len(firsts), dtype=np.int8))
        tables = {"frames.arrow": pa.table(per_frame), "series.arrow": pa.table(per_series)}
        name = _digest(tables, encodings)
        target = root / f"t-{name}"
        shared = cls._existing(target, name) if (target / "layout").exists() else None
        if shared is None:
            _write(target, tables, encodings)
            _prune(root, keep=target)
            shared = cls(target)
        return shared

    @classmethod
    def _existing(cls, target: Path, name: str) -> SharedTable | None:
        """The table another rank or an earlier run wrote, checked against its name; None (and gone) if damaged."""
        try:
            shared = cls(target)
            if _digest(shared._tables, shared.encodings) == name:
                return shared
        except (pa.ArrowException, OSError, ValueError, KeyError, ConfigError):
            pass
        warnings.warn(f"shared table {target} was damaged; writing it again", RuntimeWarning, stacklevel=3)
        shutil.rmtree(target, ignore_errors=True)
        return None

    # --- reading --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes of both files (all of it resident once every page has been read)."""
        return sum((self.directory / name).stat().st_size for name in _FILES)

    def _view(self, part: str) -> Column:
        return self._views[part]

    def _check(self, name: str, *encodings: str) -> None:
        if self.encodings.get(name) not in encodings:
            raise ConfigError(f"the shared table holds no {' or '.join(encodings)} column {name!r}")

    def numbers(self, name: str) -> Any:
        """A numeric column: ``[row]`` gives a value, ``[rows]`` an array; ``np.asarray`` the whole column.

        Checksums read as the index has them: the CRC32, or -1 where AHI lists none.
        """
        encoding = self.encodings.get(name)
        if encoding == "crc":
            return Checksums(self._view(name), self._view(f"{name}.present"))
        self._check(name, "number")
        return self._view(name)

    def text(self, name: str, row: int) -> str:
        """One row's value of a text column ("" where the index has none)."""
        return self.strings(name, np.array([row], dtype=np.int64))[0]

    def strings(self, name: str, rows: np.ndarray) -> list[str]:
        """Values of a text column at ``rows`` as str ("" where the index has none), the column read once."""
        rows = np.asarray(rows, dtype=np.int64)
        encoding = self.encodings.get(name)
        if not len(rows):
            return []
        if encoding == "hex":
            packed = np.asarray(self._view(name)[rows], dtype=np.uint8).reshape(len(rows), -1)
            width = 2 * packed.shape[1]
            joined = packed.tobytes().hex()
            return [joined[start : start + width] for start in range(0, width * len(rows), width)]
        if encoding == "uid":
            stems = self._code_strings(name, rows)
            digits = np.asarray(self._view(f"{name}.digits")[rows]).tolist()
            lengths = np.asarray(self._view(f"{name}.length")[rows]).tolist()
            return [
                f"{stem}.{''.join(DIGIT_PAIRS[byte] for byte in packed)[:length]}"
                for stem, packed, length in zip(stems, digits, lengths, strict=True)
            ]
        self._check(name, "text")
        return self._code_strings(name, rows)

    def _code_strings(self, part: str, rows: np.ndarray) -> list[str]:
        _, dictionary, _ = self._parts[part]
        assert dictionary is not None
        # Each distinct value decoded once: a batch's frames mostly share their series' values.
        codes = np.asarray(self._view(part)[rows]).reshape(-1).tolist()
        values = {code: dictionary[code] for code in set(codes)}
        return [values[code] for code in codes]

    def codes(self, name: str) -> tuple[Any, Text]:
        """A coded text column's codes (``[row]``) and the values they index (``[code]`` → str)."""
        self._check(name, "text")
        _, dictionary, _ = self._parts[name]
        assert dictionary is not None
        return self._view(name), dictionary

    def texts(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Values of a text column at ``rows`` as fixed-width bytes (for grouping and sorting)."""
        if self.encodings.get(name) == "text":  # one lookup per distinct value, not per row
            codes, dictionary = self.codes(name)
            values = np.array([dictionary[code].encode() for code in range(len(dictionary))], dtype=np.bytes_)
            return values[np.asarray(codes[np.asarray(rows, dtype=np.int64)], dtype=np.int64)]
        return np.array([value.encode() for value in self.strings(name, rows)], dtype=np.bytes_)

    def __del__(self) -> None:
        hold = getattr(self, "_hold", None)
        if hold is not None:
            os.close(hold)
            self._hold = None

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": str(self.directory)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"])  # type: ignore[misc]
