"""Colour conversion of decoded frames, matching pydicom's ``pixel_array`` output.

JPEG decoders already return RGB for YCbCr-encoded frames; frames AHI stores in other syntaxes
keep the source's YBR_FULL samples, which :func:`to_rgb` converts with the same arithmetic as
pydicom (DICOM PS3.3 C.7.6.3.1.2), so that both give identical pixels.
"""

from __future__ import annotations

import numpy as np

from . import transfer_syntax as ts

_YBR_TO_RGB = np.asarray(
    [
        [1.000, 1.000, 1.000],
        [0.000, -0.114 * 1.772 / 0.587, 1.772],
        [1.402, -0.299 * 1.402 / 0.587, 0.000],
    ],
    dtype=np.float32,
)

_YBR_FULL = frozenset({"YBR_FULL", "YBR_FULL_422"})


def ybr_full_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Convert 8-bit YBR_FULL samples (rows, columns, 3) to RGB, rounding as pydicom does."""
    work = pixels.astype(np.float32)
    work -= [0, 128, 128]
    np.matmul(work, _YBR_TO_RGB, out=work)
    work += 0.5
    np.floor(work, out=work)
    np.clip(work, 0, 255, out=work)
    return work.astype(pixels.dtype)


def to_rgb(pixels: np.ndarray, photometric: str | None, stored_syntax: str | None) -> np.ndarray:
    """RGB pixels for colour frames whose stored samples are YBR_FULL; anything else unchanged."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or photometric not in _YBR_FULL:
        return pixels
    if stored_syntax == ts.JPEG_BASELINE:
        return pixels
    return ybr_full_to_rgb(pixels)
