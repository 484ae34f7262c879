"""The byte format of cache entries: a small header, then the payload, checked by CRC32.

Nothing is pickled. A decoded frame is stored as its little-endian pixel bytes plus dtype and
shape; its CRC32 therefore equals AHI's ``PixelDataChecksumFromBaseToFullResolution``, so a frame
verified against AHI is stored without computing its CRC again, and one check on read proves the
entry intact. Encoded frames and metadata documents carry the CRC of their bytes. A truncated or
flipped entry fails the check and is treated as a miss.

Packing returns :class:`~.disk.Parts` (header, payload) so the payload is written to disk
straight from the caller's buffer; unpacking returns views into the buffer it was given.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from ..crc32 import crc32
from .disk import Parts

MAGIC = b"AHIC"
FORMAT = 1
DECODED, ENCODED = 1, 2  # 3 was a metadata entry, never written
_HEAD = struct.Struct("<4sBBHII")  # magic, format, kind, reserved, payload crc32, header length


class CorruptEntry(ValueError):
    """An entry's bytes do not check out (truncated, bit-flipped or from another format)."""


@dataclass(frozen=True)
class Record:
    kind: int
    header: dict[str, object]
    payload: memoryview


def pack(kind: int, header: dict[str, object], payload: bytes | memoryview, crc: int | None = None) -> Parts:
    """An entry as (header, payload) parts; ``crc`` is the payload's CRC32 when already known."""
    meta = json.dumps(header, separators=(",", ":")).encode()
    checksum = crc32(payload) & 0xFFFFFFFF if crc is None else crc
    return Parts((_HEAD.pack(MAGIC, FORMAT, kind, 0, checksum, len(meta)) + meta, payload))


def unpack(data: bytes | bytearray | memoryview, verify: bool = True) -> Record:
    view = memoryview(data)
    if len(view) < _HEAD.size:
        raise CorruptEntry("entry shorter than its header")
    magic, version, kind, _, crc, meta_length = _HEAD.unpack_from(view, 0)
    if magic != MAGIC or version != FORMAT:
        raise CorruptEntry("not an ahi_torch cache entry")
    start = _HEAD.size + meta_length
    if len(view) < start:
        raise CorruptEntry("entry header is truncated")
    try:
        header = json.loads(bytes(view[_HEAD.size : start]))
    except ValueError:
        raise CorruptEntry("entry header is not JSON") from None
    payload = view[start:]
    if verify and crc32(payload) & 0xFFFFFFFF != crc:
        raise CorruptEntry("entry payload fails its CRC32")
    return Record(kind, header, payload)


def pack_array(pixels: np.ndarray, crc: int | None = None) -> Parts:
    """A decoded frame; ``crc`` is its pixel CRC32 when the caller has just verified it."""
    array = np.ascontiguousarray(pixels)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    if little is not array:
        crc = None  # the bytes changed order; the caller's CRC was of native bytes
    return pack(DECODED, {"dtype": little.dtype.str, "shape": list(little.shape)}, little.data.cast("B"), crc)


def unpack_array(data: bytes | bytearray | memoryview, verify: bool = True) -> np.ndarray:
    """The frame in native byte order; a view of ``data`` when that is a writable little-endian buffer."""
    record = unpack(data, verify)
    if record.kind != DECODED:
        raise CorruptEntry("entry is not a decoded frame")
    dtype = np.dtype(str(record.header["dtype"]))
    shape = tuple(int(n) for n in record.header["shape"])  # type: ignore[attr-defined]
    if int(np.prod(shape)) * dtype.itemsize != len(record.payload):
        raise CorruptEntry("decoded frame has the wrong number of bytes")
    array = np.frombuffer(record.payload, dtype=dtype).reshape(shape)
    native = dtype.newbyteorder("=")
    if array.flags.writeable and native == dtype:
        return array  # torch.from_numpy needs writable memory: a bytearray read gives it
    return array.astype(native, copy=True)
