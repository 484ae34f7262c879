"""Frame decoders and the registry that picks one by stored transfer syntax, content type and bytes.

Kinds of frame AHI returns, and who decodes them:

========== ==================================== =========================================
kind       how it is recognised                 decoders, fastest first
========== ==================================== =========================================
``htj2k``  ``.4.201-203``, ``image/jph(c)``,    ``imagecodecs`` (OpenJPH, releases the GIL),
           CAP marker in the codestream         ``openjpeg`` (pylibjpeg-openjpeg)
``j2k``    ``.4.90/.91``, ``image/j2c``,        ``imagecodecs`` (OpenJPEG), ``openjpeg``
           codestream without CAP
``jpeg``   ``.4.50``, ``image/jpeg``, FFD8      ``imagecodecs`` (libjpeg-turbo)
``raw``    ``.1.2.1``, ``octet-stream``         numpy (bit-packed 1-bit frames unpacked)
========== ==================================== =========================================

The bytes win over the declared type when they are unambiguous: AHI documents ``image/jph``
(boxed) but clients meet bare codestreams too.

>>> import numpy as np, imagecodecs
>>> frame = np.arange(64, dtype=np.int16).reshape(8, 8)
>>> data = bytes(imagecodecs.htj2k_encode(frame, reversible=True))
>>> bool((decode_frame(data, content_type="image/jphc") == frame).all())
True
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DecodeError
from ..metadata.pixel import PixelDescription
from . import jph
from . import transfer_syntax as ts

Decoder = Callable[[bytes, "PixelDescription | None", int], np.ndarray]

_KIND_BY_SYNTAX = {
    ts.HTJ2K_LOSSLESS: "htj2k",
    ts.HTJ2K_LOSSLESS_RPCL: "htj2k",
    ts.HTJ2K: "htj2k",
    ts.JPEG_2000_LOSSLESS: "j2k",
    ts.JPEG_2000: "j2k",
    ts.JPEG_BASELINE: "jpeg",
    ts.EXPLICIT_VR_LITTLE_ENDIAN: "raw",
}
_KIND_BY_CONTENT_TYPE = {
    "image/jph": "htj2k",
    "image/jphc": "htj2k",
    "image/j2c": "j2k",
    "image/jp2": "j2k",
    "image/jpeg": "jpeg",
    "application/octet-stream": "raw",
}


@functools.cache
def has_module(name: str) -> bool:
    """Whether an optional decoder package is importable (checked once per process)."""
    return importlib.util.find_spec(name) is not None


def sniff_kind(data: bytes) -> str | None:
    """Recognise a frame by its first bytes; None when they say nothing (raw pixels)."""
    if jph.is_codestream(data) or jph.is_boxed(data):
        return "htj2k" if jph.is_htj2k(data) else "j2k"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    return None


def frame_kind(data: bytes, transfer_syntax: str | None = None, content_type: str | None = None) -> str:
    """Decide how to decode: sniffed bytes first, then content type, then transfer syntax."""
    sniffed = sniff_kind(data)
    if sniffed:
        return sniffed
    if content_type:
        kind = _KIND_BY_CONTENT_TYPE.get(content_type.split(";")[0].strip().lower())
        if kind:
            return kind
    if transfer_syntax:
        return _KIND_BY_SYNTAX.get(transfer_syntax, "raw")
    return "raw"


# --- decoders --------------------------------------------------------------------------------


class _OpenJPHFailure(RuntimeError):
    """OpenJPH gave up on a codestream inside imagecodecs (the next backend is tried)."""


_decoding = threading.local()


def _ours(error: BaseException | None) -> bool:
    if getattr(_decoding, "active", False) and isinstance(error, RuntimeError) and "ojph" in str(error):
        _decoding.error = str(error)
        return True
    return False


def _report_ojph(unraisable: Any) -> None:
    """``sys.unraisablehook``: keep OpenJPH's errors from the decoding thread, pass on the rest.

    imagecodecs' OpenJPH wrapper raises ``RuntimeError("ojph error")`` inside a C callback
    (``_copy_from_codestream``), where Python can only print it as "Exception ignored in ..."; the
    decode call itself returns partial pixels. The callback runs in the thread that called the
    decoder, so a thread-local flag ties the error to that call.
    """
    if not _ours(unraisable.exc_value):
        _report_ojph.previous(unraisable)  # type: ignore[attr-defined]


def _except_ojph(kind: type[BaseException], error: BaseException, traceback: Any) -> None:
    """``sys.excepthook``: Cython prints the same error once more through it (``PyErr_PrintEx``)."""
    if not _ours(error):
        _except_ojph.previous(kind, error, traceback)  # type: ignore[attr-defined]


_report_ojph.previous = sys.unraisablehook  # type: ignore[attr-defined]
_except_ojph.previous = sys.excepthook  # type: ignore[attr-defined]


def _capture_ojph_errors() -> None:
    # Checked on every decode: test runners and notebooks install hooks of their own later.
    if sys.unraisablehook is not _report_ojph:
        _report_ojph.previous = sys.unraisablehook  # type: ignore[attr-defined]
        sys.unraisablehook = _report_ojph
    if sys.excepthook is not _except_ojph:
        _except_ojph.previous = sys.excepthook  # type: ignore[attr-defined]
        sys.excepthook = _except_ojph


def _imagecodecs_htj2k(data: bytes, pixel: PixelDescription | None, reduce: int) -> np.ndarray:
    import imagecodecs

    _capture_ojph_errors()
    _decoding.active, _decoding.error = True, None
    try:
        array = imagecodecs.htj2k_decode(data, skipres=reduce or None)
    finally:
        _decoding.active = False
    if _decoding.error:
        raise _OpenJPHFailure(f"OpenJPH could not decode the codestream ({_decoding.error})")
    return array


def _openjpeg(data: bytes, pixel: PixelDescription | None, reduce: int) -> np.ndarray:
    if reduce:
        raise DecodeError("pylibjpeg-openjpeg cannot decode reduced resolutions; install imagecodecs")
    import openjpeg

    return np.asarray(openjpeg.decode(data))


def _imagecodecs_j2k(data: bytes, pixel: PixelDescription | None, reduce: int) -> np.ndarray:
    if reduce:
        raise DecodeError("reduced-resolution decode is only available for HTJ2K frames")
    import imagecodecs

    return imagecodecs.jpeg2k_decode(data, numthreads=1)


def _imagecodecs_jpeg(data: bytes, pixel: PixelDescription | None, reduce: int) -> np.ndarray:
    if reduce:
        raise DecodeError("reduced-resolution decode is only available for HTJ2K frames")
    import imagecodecs

    if pixel is not None and pixel.photometric_interpretation == "RGB":
        # RGB-photometric JPEGs were compressed without a colour transform; decode them as such.
        return imagecodecs.jpeg8_decode(data, colorspace="RGB", outcolorspace="RGB")
    return imagecodecs.jpeg8_decode(data)


def _raw(data: bytes, pixel: PixelDescription | None, reduce: int) -> np.ndarray:
    if pixel is None:
        raise DecodeError("an uncompressed frame needs the instance's pixel description to decode")
    if reduce:
        raise DecodeError("reduced-resolution decode is only available for HTJ2K frames")
    count = pixel.rows * pixel.columns * pixel.samples_per_pixel
    if pixel.bits_allocated == 1:
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        if bits.size < count:
            raise DecodeError(f"bit-packed frame holds {bits.size} pixels, expected {count}")
        return bits[:count].reshape(pixel.shape)
    dtype = pixel.dtype.newbyteorder("<")
    if len(data) < count * dtype.itemsize:
        raise DecodeError(f"raw frame has {len(data)} bytes, expected {count * dtype.itemsize}")
    flat = np.frombuffer(data, dtype=dtype, count=count).astype(pixel.dtype, copy=False)
    if pixel.samples_per_pixel > 1 and pixel.planar_configuration == 1:
        return np.ascontiguousarray(flat.reshape(pixel.samples_per_pixel, pixel.rows, pixel.columns).transpose(1, 2, 0))
    return flat.reshape(pixel.shape)


@dataclass(frozen=True)
class Backend:
    """A decoder for one kind of frame, and the module it needs."""

    name: str
    kind: str
    module: str | None
    decode: Decoder

    @property
    def available(self) -> bool:
        return self.module is None or has_module(self.module)


BACKENDS: tuple[Backend, ...] = (
    Backend("imagecodecs", "htj2k", "imagecodecs", _imagecodecs_htj2k),
    Backend("openjpeg", "htj2k", "openjpeg", _openjpeg),
    Backend("imagecodecs", "j2k", "imagecodecs", _imagecodecs_j2k),
    Backend("openjpeg", "j2k", "openjpeg", _openjpeg),
    Backend("imagecodecs", "jpeg", "imagecodecs", _imagecodecs_jpeg),
    Backend("numpy", "raw", None, _raw),
)
#: The backend names a caller may prefer (``decode_frame(prefer=...)``, ``FrameFetcher(decoder=...)``).
PREFERENCES = tuple(dict.fromkeys(backend.name for backend in BACKENDS if backend.kind == "htj2k"))


def backends_for(kind: str, prefer: str | None = None) -> list[Backend]:
    """Available backends for a kind; ``prefer`` (a backend name) moves that one to the front."""
    found = [b for b in BACKENDS if b.kind == kind and b.available]
    if prefer:
        found.sort(key=lambda b: b.name != prefer)
    return found


def decode_frame(
    data: bytes,
    *,
    transfer_syntax: str | None = None,
    content_type: str | None = None,
    pixel: PixelDescription | None = None,
    reduce: int = 0,
    prefer: str | None = None,
) -> np.ndarray:
    """Decode one frame to (rows, columns) or (rows, columns, samples) in the stored dtype.

    ``reduce`` skips that many resolution levels (HTJ2K only: 1 halves each side).
    ``prefer`` picks a backend by name (``"imagecodecs"`` or ``"openjpeg"``) where both exist.
    The dtype follows the pixel description when one is given, so 12-bit signed data decoded by
    a codec that reports unsigned samples still comes back signed.
    """
    kind = frame_kind(data, transfer_syntax, content_type)
    candidates = backends_for(kind, prefer)
    if not candidates:
        raise DecodeError(f"no decoder is installed for {kind} frames (pip install imagecodecs)")
    errors: list[str] = []
    for backend in candidates:
        try:
            array = backend.decode(data, pixel, reduce)
        except DecodeError:
            raise
        except Exception as exc:  # codec libraries raise their own error types
            errors.append(f"{backend.name}: {exc}")
            continue
        return _conform(array, pixel)
    raise DecodeError(f"could not decode {kind} frame ({len(data)} bytes): " + "; ".join(errors))


def _conform(array: np.ndarray, pixel: PixelDescription | None) -> np.ndarray:
    if pixel is None or pixel.bits_allocated == 1:
        return array
    if array.ndim == 3 and pixel.samples_per_pixel == 1 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype != pixel.dtype:
        if array.dtype.itemsize == pixel.dtype.itemsize:
            # Same width, other signedness: reinterpret the bits, as pydicom does.
            return array.view(pixel.dtype)
        if array.dtype.itemsize < pixel.dtype.itemsize:
            return array.astype(pixel.dtype)
    return array
