"""JPEG 2000 family framing: sniff codestreams and boxed files, and box an HTJ2K codestream as JPH.

AHI serves frames stored as HTJ2K (``.4.201``/``.4.202``) with ``Content-Type: image/jph``: the
ISO/IEC 15444-15 file format (signature, ``ftyp``, ``jp2h`` header, ``jp2c`` codestream).
``image/jphc`` and ``image/j2c`` carry a bare codestream starting ``FF4F FF51``. Decoders should
sniff the bytes instead of trusting the header: both forms reach clients.

AHI's frames are laid out for progressive reads: RPCL order, one tile-part per resolution level,
indexed by a TLM marker, in a ``jp2c`` box of length 0 ("to the end of the file") under the brand
``jp2 `` (AWS's own fixtures, encoded by Kakadu, look like this; AWS's tile-level-marker proxy
reads a body only until the level it wants is complete). :func:`tile_part_ends` finds where each
level ends.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SOC = b"\xff\x4f"
_SIZ = 0xFF51
_CAP = 0xFF50
_SOT = 0xFF90
_SOD = 0xFF93
_TLM = 0xFF55
_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def is_codestream(data: bytes) -> bool:
    """True for a bare J2K/HTJ2K codestream (``FF4F FF51``)."""
    return data[:4] == b"\xff\x4f\xff\x51"


def is_boxed(data: bytes) -> bool:
    """True for a JP2/JPH file (JPEG 2000 signature box first)."""
    return data[:12] == _SIGNATURE


@dataclass(frozen=True)
class CodestreamInfo:
    """What the SIZ and CAP markers of a main header say."""

    width: int
    height: int
    components: int
    bits: int
    signed: bool
    high_throughput: bool


def codestream_of(data: bytes) -> bytes:
    """The codestream inside a JP2/JPH file (or ``data`` itself when it is already bare)."""
    if not is_boxed(data):
        return data
    offset = 0
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if length == 1:
            length = struct.unpack_from(">Q", data, offset + 8)[0]
            header = 16
        elif length == 0:
            length = len(data) - offset
        if kind == b"jp2c":
            return data[offset + header : offset + length]
        if length < header:
            break
        offset += length
    raise ValueError("JPEG 2000 file has no jp2c codestream box")


def inspect_codestream(data: bytes) -> CodestreamInfo:
    """Read image size, components, precision and whether the HT (Part 15) CAP marker is present."""
    stream = codestream_of(data)
    if not is_codestream(stream):
        raise ValueError("not a JPEG 2000 codestream")
    offset = 2
    info: dict[str, int] = {}
    high_throughput = False
    while offset + 4 <= len(stream):
        marker, length = struct.unpack_from(">HH", stream, offset)
        if marker == _SIZ:
            _, xsiz, ysiz, xo, yo = struct.unpack_from(">HIIII", stream, offset + 4)
            csiz = struct.unpack_from(">H", stream, offset + 38)[0]
            ssiz = stream[offset + 40]
            info = {"width": xsiz - xo, "height": ysiz - yo, "components": csiz, "ssiz": ssiz}
        elif marker == _CAP:
            pcap = struct.unpack_from(">I", stream, offset + 4)[0]
            high_throughput = bool(pcap & (1 << (32 - 15)))
        elif marker in (_SOT, _SOD):
            break
        offset += 2 + length
    if not info:
        raise ValueError("JPEG 2000 codestream has no SIZ marker")
    ssiz = info["ssiz"]
    return CodestreamInfo(
        width=info["width"],
        height=info["height"],
        components=info["components"],
        bits=(ssiz & 0x7F) + 1,
        signed=bool(ssiz & 0x80),
        high_throughput=high_throughput,
    )


def is_htj2k(data: bytes) -> bool:
    """True when the bytes hold an HTJ2K (Part 15) codestream, boxed or bare."""
    try:
        return inspect_codestream(data).high_throughput
    except (ValueError, struct.error):
        return False


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def wrap_jph(codestream: bytes) -> bytes:
    """Box a bare HTJ2K codestream as a JPH file, with an image header taken from its SIZ marker.

    >>> import imagecodecs, numpy as np
    >>> jph = wrap_jph(bytes(imagecodecs.htj2k_encode(np.zeros((4, 4), np.uint16), reversible=True)))
    >>> is_boxed(jph), is_htj2k(jph)
    (True, True)
    """
    info = inspect_codestream(codestream)
    bpc = (info.bits - 1) | (0x80 if info.signed else 0)
    ihdr = _box(b"ihdr", struct.pack(">IIHBBBB", info.height, info.width, info.components, bpc, 7, 0, 0))
    # Enumerated colour space: 17 = greyscale, 16 = sRGB; DICOM's PhotometricInterpretation
    # in the metadata remains the authority on what the samples mean.
    colour = 17 if info.components == 1 else 16
    colr = _box(b"colr", struct.pack(">BBBI", 1, 0, 0, colour))
    ftyp = _box(b"ftyp", b"jp2 " + struct.pack(">I", 0) + b"jp2 jph ")
    # Length 0: the codestream box runs to the end of the file, as in AHI's frames.
    return _SIGNATURE + ftyp + _box(b"jp2h", ihdr + colr) + struct.pack(">I4s", 0, b"jp2c") + codestream


def tile_part_ends(data: bytes) -> list[int]:
    """Byte offsets in ``data`` (boxed or bare) where each tile-part ends, in codestream order.

    Read from the TLM marker when the main header has one, else by walking the SOT markers.
    With one tile-part per resolution level (AHI's layout), entry ``k`` is where the body can
    stop for a decode at level ``k`` (``reduce = len(ends) - 1 - k``).
    """
    stream = codestream_of(data)
    start = len(data) - len(stream) if is_boxed(data) else 0
    if not is_codestream(stream):
        raise ValueError("not a JPEG 2000 codestream")
    offset, lengths = 2, []
    while offset + 4 <= len(stream):
        marker, length = struct.unpack_from(">HH", stream, offset)
        if marker == _TLM:
            stlm = stream[offset + 5]
            st, sp = (stlm >> 4) & 0x3, 4 if stlm & 0x40 else 2
            entry = st + sp
            for at in range(offset + 6, offset + 2 + length, entry):
                raw = stream[at + st : at + entry]
                lengths.append(int.from_bytes(raw, "big"))
        elif marker == _SOT:
            break
        offset += 2 + length
    first_sot = offset
    if not lengths:  # no TLM: walk the tile-parts themselves
        at = first_sot
        while at + 12 <= len(stream) and struct.unpack_from(">H", stream, at)[0] == _SOT:
            psot = struct.unpack_from(">I", stream, at + 6)[0]
            if psot == 0:
                lengths.append(len(stream) - 2 - at)
                break
            lengths.append(psot)
            at += psot
    ends, at = [], start + first_sot
    for length in lengths:
        at += length
        ends.append(at)
    return ends


#: How far into a body the main header (and its TLM marker) is looked for before giving up.
HEADER_PEEK = 64 * 1024


def level_end(head: bytes, reduce: int) -> int | None:
    """How many bytes of a frame a decode skipping ``reduce`` levels needs, judging by its start.

    ``None`` while ``head`` does not yet show the tile-part layout; ``-1`` (all of it) for frames
    not laid out one tile-part per level, or when ``reduce`` skips every level.
    """
    try:
        ends = tile_part_ends(head)
    except (ValueError, IndexError, struct.error):
        return None if len(head) < HEADER_PEEK else -1
    if len(ends) < 2 or not 0 < reduce < len(ends):
        return -1
    return ends[len(ends) - 1 - reduce]
