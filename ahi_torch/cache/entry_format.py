"""The byte format of cache entries: a small header, then the payload, checked by CRC32.

Nothing is pickled. A decoded frame is stored as its little-endian pixel bytes plus dtype and
shape; its CRC32 therefore equals AHI's ``PixelDataChecksumFromBaseToFullResolution``, so a frame
verified against AHI is stored without computing its CRC again, and one check on read proves the
entry intact. Encoded frames carry the CRC of their bytes. A truncated or flipped entry fails the
check and is treated as a miss.

Entries sit back to back in pack files (:mod:`.packs`), so each one says how long it is and names
its own key: a pack can be read from start to end without the index (``ahi-torch cache repair``
rebuilds the index that way). Packing returns :class:`Parts` (header, payload), so the payload is
written to disk straight from the caller's buffer; unpacking returns views into the buffer it was
given.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from ..crc32 import crc32

MAGIC = b"AHIC"
FORMAT = 2  # 1 had no payload length and no key: entries of one file each
DECODED, ENCODED = 1, 2  # 3 was a metadata entry, never written
#: magic, format, kind, reserved, payload crc32, header length, payload length
HEAD = struct.Struct("<4sBBHIIQ")


class CorruptEntry(ValueError):
    """An entry's bytes do not check out (truncated, bit-flipped or from another format)."""


class Parts(tuple[bytes | memoryview, ...]):
    """An entry given as consecutive buffers (header, payload): stored as their concatenation."""

    @property
    def size(self) -> int:
        return sum(memoryview(part).nbytes for part in self)


@dataclass(frozen=True)
class Record:
    kind: int
    header: dict[str, object]
    payload: memoryview

    @property
    def key(self) -> str:
        return str(self.header.get("key", ""))


def pack(kind: int, header: dict[str, object], payload: bytes | memoryview, crc: int | None = None) -> Parts:
    """An entry as (header, payload) parts; ``crc`` is the payload's CRC32 when already known."""
    meta = json.dumps(header, separators=(",", ":")).encode()
    checksum = crc32(payload) & 0xFFFFFFFF if crc is None else crc
    size = memoryview(payload).nbytes
    return Parts((HEAD.pack(MAGIC, FORMAT, kind, 0, checksum, len(meta), size) + meta, payload))


def entry_size(data: bytes | bytearray | memoryview) -> int:
    """The length of the entry that starts ``data`` (header included), read from its header alone."""
    view = memoryview(data)
    if len(view) < HEAD.size:
        raise CorruptEntry("entry shorter than its header")
    magic, version, _, _, _, meta_length, payload_length = HEAD.unpack_from(view, 0)
    if magic != MAGIC or version != FORMAT:
        raise CorruptEntry("not an ahi_torch cache entry")
    return int(HEAD.size + meta_length + payload_length)


def unpack(data: bytes | bytearray | memoryview, verify: bool = True) -> Record:
    """The entry that fills ``data`` exactly; raises :class:`CorruptEntry` for anything else."""
    view = memoryview(data)
    size = entry_size(view)
    if len(view) != size:
        raise CorruptEntry(f"entry is {len(view)} bytes where its header says {size}")
    _, _, kind, _, crc, meta_length, _ = HEAD.unpack_from(view, 0)
    start = HEAD.size + meta_length
    try:
        header = json.loads(bytes(view[HEAD.size : start]))
    except ValueError:
        raise CorruptEntry("entry header is not JSON") from None
    if not isinstance(header, dict):
        raise CorruptEntry("entry header is not a JSON object")
    payload = view[start:]
    if verify and crc32(payload) & 0xFFFFFFFF != crc:
        raise CorruptEntry("entry payload fails its CRC32")
    return Record(kind, header, payload)


def pack_array(pixels: np.ndarray, key: str, crc: int | None = None) -> Parts:
    """A decoded frame stored under ``key``; ``crc`` is its pixel CRC32 when the caller has just verified it.

    The key is required: a read checks that the entry it finds names the key it looked up.
    """
    array = np.ascontiguousarray(pixels)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    if little is not array:
        crc = None  # the bytes changed order; the caller's CRC was of native bytes
    header: dict[str, object] = {"key": key, "dtype": little.dtype.str, "shape": list(little.shape)}
    return pack(DECODED, header, little.data.cast("B"), crc)


def pack_encoded(data: bytes | memoryview, content_type: str, key: str) -> Parts:
    """An encoded frame: AHI's bytes and the content type they came with."""
    return pack(ENCODED, {"key": key, "content_type": content_type}, data)


def unpack_array(data: bytes | bytearray | memoryview, verify: bool = True) -> np.ndarray:
    """The frame in native byte order; a view of ``data`` when that is a writable little-endian buffer."""
    return record_array(unpack(data, verify))


def record_array(record: Record) -> np.ndarray:
    """The decoded frame a record holds (see :func:`unpack_array`)."""
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
