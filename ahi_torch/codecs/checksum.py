"""CRC32 of decoded pixels, as AHI computes ``PixelDataChecksumFromBaseToFullResolution``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..crc32 import crc32
from ..errors import ChecksumMismatch


def pixel_crc32(pixels: np.ndarray) -> int:
    """Unsigned CRC32 of the pixels as little-endian bytes in (rows, columns[, samples]) order.

    >>> pixel_crc32(np.zeros((2, 2), dtype=np.uint8))
    558161692
    """
    array = np.ascontiguousarray(pixels)
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and np.little_endian is False):
        array = array.astype(array.dtype.newbyteorder("<"))
    return crc32(array.data) & 0xFFFFFFFF


def expected_checksum(levels: Sequence[Mapping[str, Any]], height: int, width: int) -> int | None:
    """The checksum listed for a decoded size, or None if the metadata has no level of that size."""
    for level in levels:
        if int(level.get("Width", -1)) == width and int(level.get("Height", -1)) == height:
            return int(level["Checksum"])
    return None


def verify_pixels(pixels: np.ndarray, levels: Sequence[Mapping[str, Any]], where: str) -> None:
    """Raise :class:`ChecksumMismatch` unless the pixels' CRC32 matches the level of their size.

    ``where`` names the image set and frame in the error message.
    """
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    expected = expected_checksum(levels, height, width)
    if expected is None:
        raise ChecksumMismatch(where, -1, pixel_crc32(pixels)) from ValueError(
            f"no checksum listed for a {width}x{height} decode"
        )
    actual = pixel_crc32(pixels)
    if actual != expected:
        raise ChecksumMismatch(where, expected, actual)
