"""How a frame's pixels are laid out: the Image Pixel module attributes of an instance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import values


@dataclass(frozen=True)
class PixelDescription:
    """Rows, columns and sample encoding of every frame of an instance.

    >>> p = PixelDescription(rows=512, columns=512, bits_allocated=16, bits_stored=12,
    ...                      pixel_representation=1)
    >>> p.dtype, p.shape
    (dtype('int16'), (512, 512))
    """

    rows: int
    columns: int
    samples_per_pixel: int = 1
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    photometric_interpretation: str = "MONOCHROME2"
    planar_configuration: int = 0
    number_of_frames: int = 1

    @property
    def signed(self) -> bool:
        return self.pixel_representation == 1

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype of decoded samples (bit-packed 1-bit frames decode to uint8)."""
        if self.bits_allocated <= 8:
            return np.dtype(np.int8 if self.signed else np.uint8)
        if self.bits_allocated <= 16:
            return np.dtype(np.int16 if self.signed else np.uint16)
        if self.bits_allocated <= 32:
            return np.dtype(np.int32 if self.signed else np.uint32)
        return np.dtype(np.int64 if self.signed else np.uint64)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one decoded frame: (rows, columns) or (rows, columns, samples)."""
        if self.samples_per_pixel == 1:
            return (self.rows, self.columns)
        return (self.rows, self.columns, self.samples_per_pixel)

    @property
    def frame_bytes(self) -> int:
        """Uncompressed size of a frame (bit-packed for 1-bit data), as AHI's FrameSizeInBytes."""
        bits = self.rows * self.columns * self.samples_per_pixel * self.bits_allocated
        return (bits + 7) // 8

    @classmethod
    def from_dicom(cls, attributes: Mapping[str, Any]) -> PixelDescription | None:
        """Read the Image Pixel attributes of an instance; None when Rows or Columns is missing."""
        rows = values.integer(attributes.get("Rows"))
        columns = values.integer(attributes.get("Columns"))
        if not rows or not columns:
            return None

        def get_int(keyword: str, default: int) -> int:
            found = values.integer(attributes.get(keyword))
            return default if found is None else found

        bits_allocated = get_int("BitsAllocated", 16)
        return cls(
            rows=rows,
            columns=columns,
            samples_per_pixel=get_int("SamplesPerPixel", 1),
            bits_allocated=bits_allocated,
            bits_stored=get_int("BitsStored", bits_allocated),
            pixel_representation=get_int("PixelRepresentation", 0),
            photometric_interpretation=values.text(attributes.get("PhotometricInterpretation")) or "MONOCHROME2",
            planar_configuration=get_int("PlanarConfiguration", 0),
            number_of_frames=max(1, get_int("NumberOfFrames", 1)),
        )
