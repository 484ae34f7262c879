"""DICOM transfer syntaxes AHI stores, and the Content-Type GetImageFrame returns for each.

The table follows the ``GetImageFrameResponse.contentType`` documentation of the service model;
``1.2.840.10008.1.2.4.90`` (JPEG 2000 lossless, used by data stores created with
``losslessStorageFormat=JPEG_2000_LOSSLESS``) is not listed there and is served as ``image/j2c``.
"""

from __future__ import annotations

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
JPEG_XL = "1.2.840.10008.1.2.4.112"

#: What AHI assumes when ``StoredTransferSyntaxUID`` is missing or null.
DEFAULT_STORED = HTJ2K_LOSSLESS_RPCL
#: The HTJ2K transfer syntaxes (frames a reduced-resolution read can stop early in).
HTJ2K_SYNTAXES = frozenset({HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K})

_CONTENT_TYPES = {
    EXPLICIT_VR_LITTLE_ENDIAN: "application/octet-stream",
    JPEG_BASELINE: "image/jpeg",
    JPEG_2000_LOSSLESS: "image/j2c",
    JPEG_2000: "image/j2c",
    HTJ2K_LOSSLESS: "image/jph",
    HTJ2K_LOSSLESS_RPCL: "image/jph",
    HTJ2K: "image/jphc",
    JPEG_XL: "image/jxl",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.100.1": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.101.1": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.102.1": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.103.1": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.104.1": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.105.1": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.106.1": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H256",
    "1.2.840.10008.1.2.4.108": "video/H256",
}


def content_type_for(stored_transfer_syntax: str | None) -> str:
    """The GetImageFrame Content-Type for a stored transfer syntax (missing means HTJ2K RPCL).

    >>> content_type_for("1.2.840.10008.1.2.4.202")
    'image/jph'
    >>> content_type_for(None)
    'image/jph'
    """
    return _CONTENT_TYPES.get(stored_transfer_syntax or DEFAULT_STORED, "application/octet-stream")
