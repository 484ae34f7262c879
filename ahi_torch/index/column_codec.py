"""How a frame index's columns are stored in a shared table, and read back from the mapped files.

The column codec of :mod:`.shared_table` (which owns the files: naming, writing, pruning, mapping):

- text is dictionary-coded (a filtered index keeps only the values it uses);
- 32-hex-digit IDs (AHI's frame and image set IDs) are 16 bytes;
- a UID is a coded stem plus its last component's digits, two to a byte, with their count;
- a CRC32 is 4 bytes plus a present flag (-1 in the index means none);
- integers take the smallest signed type that holds them.

:func:`encode_column` turns an Arrow column into its stored parts; :class:`Column`, :class:`Text` and
:class:`Checksums` read them from the mapped arrays without a Python object per value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError
from .columns import CHECKSUM_COLUMNS

_UID_PATTERN = r"^(?P<stem>.+)\.(?P<last>[0-9]+)$"
_HEX_PATTERN = r"^[0-9a-f]{32}$"
#: Two decimal digits per byte, as :func:`encode_column` packs a UID's last component.
DIGIT_PAIRS = [f"{high}{low}" for high in range(16) for low in range(16)]
_NIBBLE = np.full(256, 255, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)


@dataclass(frozen=True)
class StoredArray:
    """One stored array of a column: ``values`` per frame (n,) or (n, k), codes into ``dictionary``."""

    values: np.ndarray
    dictionary: pa.Array | None = None


def narrow(values: np.ndarray) -> np.ndarray:
    """Integers in the smallest signed type that holds them (codes, slice indices, sizes)."""
    if values.dtype.kind not in "iu" or len(values) == 0:
        return values
    low, high = int(values.min()), int(values.max())
    for kind in (np.int8, np.int16, np.int32):
        info = np.iinfo(kind)
        if info.min <= low and high <= info.max:
            return values.astype(kind)
    return values.astype(np.int64)


def _text_part(array: pa.Array) -> StoredArray:
    if pa.types.is_dictionary(array.type) and len(pc.unique(array.indices.drop_null())) < len(array.dictionary):
        array = array.dictionary_decode()  # a filtered index keeps every value; store only those used
    coded = array if pa.types.is_dictionary(array.type) else array.cast(pa.string()).dictionary_encode()
    dictionary = coded.dictionary.cast(pa.string())
    codes = coded.indices.to_numpy(zero_copy_only=False)
    if coded.null_count:  # a null code reads as ""
        dictionary = pa.concat_arrays([dictionary, pa.array([""], pa.string())])
        codes = coded.indices.fill_null(len(dictionary) - 1).to_numpy(zero_copy_only=False)
    return StoredArray(narrow(np.asarray(codes)), dictionary)


def _hex_part(array: pa.Array) -> StoredArray | None:
    """32 lowercase hex digits → 16 bytes per value (AHI's frame and image set IDs)."""
    if len(array) == 0 or array.null_count or not pc.all(pc.match_substring_regex(array, _HEX_PATTERN)).as_py():
        return None
    digits = np.frombuffer(array.buffers()[2], dtype=np.uint8)
    start = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset]
    nibbles = _NIBBLE[digits[start : start + 32 * len(array)]].reshape(-1, 16, 2)
    return StoredArray((nibbles[:, :, 0] << 4) | nibbles[:, :, 1])


def _uid_parts(array: pa.Array) -> tuple[StoredArray, StoredArray, StoredArray] | None:
    """A UID as its coded stem, and its last component's digits two to a byte, with their count.

    The stem (everything before the last dot) is usually one per series; the last component is
    what changes from instance to instance, 18 to 39 digits in 9 to 20 bytes.
    """
    if array.null_count or len(array) == 0:
        return None
    split = pc.extract_regex(array, _UID_PATTERN)
    if split.null_count:
        return None
    lasts = split.field("last").cast(pa.string())
    lengths = np.asarray(pc.utf8_length(lasts).to_numpy(zero_copy_only=False), dtype=np.int64)
    width = int(lengths.max() + 1) // 2 * 2
    offsets = np.frombuffer(lasts.buffers()[1], dtype=np.int32)[lasts.offset : lasts.offset + len(lasts) + 1]
    data = np.frombuffer(lasts.buffers()[2], dtype=np.uint8)
    position = offsets[:-1, None] + np.arange(width)
    inside = np.arange(width) < lengths[:, None]
    digits = np.where(inside, data[np.minimum(position, len(data) - 1)] - ord("0"), 0).astype(np.uint8)
    packed = (digits[:, 0::2] << 4) | digits[:, 1::2]
    return _text_part(split.field("stem")), StoredArray(packed), StoredArray(narrow(lengths))


def _crc_parts(values: np.ndarray) -> tuple[StoredArray, StoredArray]:
    """CRC32s with -1 for none: 4 bytes of value plus a present flag."""
    present = values >= 0
    return StoredArray(np.where(present, values, 0).astype(np.uint32)), StoredArray(present.astype(np.uint8))


def _numbers(array: pa.Array) -> np.ndarray:
    """Numbers as numpy with the index's fill values: -1 for missing integers, NaN for floats."""
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
        filled = array.fill_null(pa.scalar([None] * width, array.type)) if array.null_count else array
        flat = np.asarray(filled.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
        return (
            flat.reshape(-1, width)
            if pa.types.is_floating(array.type.value_type)
            else flat.astype(np.int64).reshape(-1, width)
        )
    if pa.types.is_boolean(array.type):
        return np.asarray(array.fill_null(False).to_numpy(zero_copy_only=False), dtype=np.uint8)
    if pa.types.is_floating(array.type):  # float32 stays float32 (regression labels)
        return np.asarray(array.fill_null(np.nan).to_numpy(zero_copy_only=False))
    if pa.types.is_integer(array.type):
        return np.asarray(array.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    raise ConfigError(f"a shared table cannot hold a column of type {array.type}")


def encode_column(name: str, array: pa.Array) -> tuple[str, dict[str, StoredArray]]:
    """How a column is stored and its parts (``name``, ``name.digits``, ``name.present``...)."""
    if pa.types.is_dictionary(array.type):
        return "text", {name: _text_part(array)}
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
        hexed = _hex_part(array)
        if hexed is not None:
            return "hex", {name: hexed}
        uid = _uid_parts(array)
        if uid is not None:
            return "uid", {name: uid[0], f"{name}.digits": uid[1], f"{name}.length": uid[2]}
        return "text", {name: _text_part(array)}
    values = _numbers(array)
    if name in CHECKSUM_COLUMNS:
        value, present = _crc_parts(values)
        return "crc", {name: value, f"{name}.present": present}
    if values.ndim == 1 and values.dtype.kind == "i":
        values = narrow(values)
    return "number", {name: StoredArray(values)}


def constant_within(values: np.ndarray, order: np.ndarray, starts: np.ndarray) -> bool:
    """Whether every series (rows ``order`` split at ``starts``) has one value, compared bit for bit."""
    rows = np.ascontiguousarray(values[order]).view(np.uint8).reshape(len(order), -1)
    changes = np.flatnonzero((rows[1:] != rows[:-1]).any(axis=1)) + 1
    return bool(np.isin(changes, starts).all())


def to_arrow(part: StoredArray) -> pa.Array:
    values = part.values
    if part.dictionary is not None:
        return pa.DictionaryArray.from_arrays(pa.array(values), part.dictionary)
    if values.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    return pa.array(values)


def content_buffers(array: pa.Array) -> list[np.ndarray]:
    """The bytes a stored array stands for, independent of buffer padding and offsets."""
    if pa.types.is_dictionary(array.type):
        text = Text(array.dictionary)
        used = text.data[text.offsets[0] : text.offsets[-1]]
        return [*content_buffers(array.indices), text.offsets - text.offsets[0], used]
    return [numpy_view(array)]


def numpy_view(array: pa.Array) -> np.ndarray:
    """A zero-copy numpy view of a mapped primitive or fixed-size-list array."""
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
        flat = array.values
        if len(array) == 0:  # an empty array may have no data buffer at all
            return np.zeros((0, width), dtype=flat.type.to_pandas_dtype())
        values = np.frombuffer(flat.buffers()[1], dtype=flat.type.to_pandas_dtype())
        return values[flat.offset : flat.offset + len(array) * width].reshape(-1, width)
    if len(array) == 0:
        return np.zeros(0, dtype=array.type.to_pandas_dtype())
    values = np.frombuffer(array.buffers()[1], dtype=array.type.to_pandas_dtype())
    return values[array.offset : array.offset + len(array)]


class Column:
    """A numeric column's values for one row or an array of rows, per frame or through the series code."""

    def __init__(self, values: np.ndarray, series: np.ndarray | None) -> None:
        self.values = values
        self.series = series

    def __getitem__(self, rows: Any) -> Any:
        if self.series is None:
            return self.values[rows]
        return self.values[self.series[rows]]

    def __len__(self) -> int:
        return len(self.series) if self.series is not None else len(self.values)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self.values if self.series is None else self.values[self.series]
        return np.asarray(whole, dtype=dtype)


class Text:
    """Values of a mapped string array, decoded one at a time (no Python object per value is kept)."""

    def __init__(self, array: pa.Array) -> None:
        self.offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + len(array) + 1]
        data = array.buffers()[2]
        self.data = np.frombuffer(data, dtype=np.uint8) if data is not None and data.size else np.zeros(0, np.uint8)

    def __getitem__(self, code: int) -> str:
        return bytes(self.data[self.offsets[code] : self.offsets[code + 1]]).decode()

    def __len__(self) -> int:
        return len(self.offsets) - 1


class Checksums:
    """CRC32s per row, -1 where none is listed: the index's convention, from 4 bytes plus a flag."""

    def __init__(self, values: Column, present: Column) -> None:
        self.values = values
        self.present = present

    def __getitem__(self, rows: Any) -> Any:
        return np.where(self.present[rows] != 0, self.values[rows].astype(np.int64), -1)

    def __len__(self) -> int:
        return len(self.values)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[slice(None)], dtype=dtype)
