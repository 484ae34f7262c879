"""Store an instance's frames as AHI does: transcode to lossless HTJ2K (or JPEG 2000), or keep them.

Per AHI's supported-transfer-syntax table:

* JPEG Baseline (``.4.50``), JPEG 2000 (``.4.91``) and HTJ2K (``.4.203``) frames are kept as
  imported; binary segmentations (1 bit allocated, uncompressed) are kept bit-packed as
  Explicit VR Little Endian (``.1.2.1``), one byte-aligned chunk per frame.
* Everything else pydicom can decode is transcoded losslessly to HTJ2K RPCL with TLM markers
  (stored ``.4.202``, served boxed as ``image/jph``), or to JPEG 2000 lossless (``.4.90``) when
  the data store was created with ``losslessStorageFormat=JPEG_2000_LOSSLESS``.

Every stored frame is decoded once more and checked against the source pixels (AHI's pixel
data verification); ``PixelDataChecksumFromBaseToFullResolution`` lists the CRC32 of the decoded
pixels at up to three resolution levels, base first, full resolution last. Frames kept in their
original (possibly lossy) syntax carry ``MinPixelValue``/``MaxPixelValue`` as ``null``, and their
``FrameSizeInBytes`` is the size of the original encoded frame, as AHI's pixel-verification guide
says; transcoded and uncompressed frames report the decoded frame's size and both values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import iter_pixels

from ...codecs import decode_frame, pixel_crc32, wrap_jph
from ...codecs import transfer_syntax as ts
from ...metadata.pixel import PixelDescription

KEPT_AS_IMPORTED = frozenset({ts.JPEG_BASELINE, ts.JPEG_2000, ts.HTJ2K})
_UNCOMPRESSED = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
_RESOLUTION_LEVELS = 3
_ENCODE_ATTEMPTS = 3
#: Whether other threads of this process may run OpenJPH at the same time. Then each reduced
#: decode is done twice and compared (OpenJPH has been seen to return a wrong reduced decode
#: under threads); the importer's process pool clears it in its workers, which run one file at a time.
CODEC_SHARED_BY_THREADS = True


class PixelDataProblem(Exception):
    """The instance's pixel data cannot be stored; the message goes to the import's failure file."""


@dataclass(frozen=True)
class StoredFrame:
    """One frame as stored, with the ImageFrames entry values AHI computes for it."""

    data: bytes
    checksums: list[dict[str, int]]
    min_value: int | None
    max_value: int | None
    size: int

    def image_frame_entry(self, frame_id: str) -> dict[str, Any]:
        # AHI writes both keys, null for frames kept in their original syntax (its pixel-verification
        # guide shows them so): client code that indexes them must not meet a KeyError here only.
        return {
            "ID": frame_id,
            "PixelDataChecksumFromBaseToFullResolution": self.checksums,
            "MinPixelValue": self.min_value,
            "MaxPixelValue": self.max_value,
            "FrameSizeInBytes": self.size,
        }


def _levels(data: bytes, full: np.ndarray, reducible: bool) -> list[dict[str, int]]:
    levels = []
    if reducible:
        for skip in range(_RESOLUTION_LEVELS - 1, 0, -1):
            if min(full.shape[0], full.shape[1]) >> skip < 1:
                continue
            reduced = decode_frame(data, reduce=skip)
            if CODEC_SHARED_BY_THREADS and not np.array_equal(reduced, decode_frame(data, reduce=skip)):
                raise ValueError("reduced-resolution decodes disagree")  # see _encode_verified
            levels.append(
                {"Width": int(reduced.shape[1]), "Height": int(reduced.shape[0]), "Checksum": pixel_crc32(reduced)}
            )
    levels.append({"Width": int(full.shape[1]), "Height": int(full.shape[0]), "Checksum": pixel_crc32(full)})
    return levels


def _stored(data: bytes, decoded: np.ndarray, size: int, reducible: bool, original: bool = False) -> StoredFrame:
    """A stored frame; ``original``: kept in its imported syntax (no min/max, encoded size)."""
    return StoredFrame(
        data=data,
        checksums=_levels(data, decoded, reducible),
        min_value=None if original else int(decoded.min()),
        max_value=None if original else int(decoded.max()),
        size=len(data) if original else size,
    )


def _encode(frame: np.ndarray, storage_format: str) -> tuple[bytes, bool]:
    # Encoders read native byte order; big-endian sources arrive as '>u2'.
    frame = np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("="))
    if storage_format == "JPEG_2000_LOSSLESS":
        return bytes(imagecodecs.jpeg2k_encode(frame, level=0, reversible=True, codecformat="J2K", numthreads=1)), False
    # RPCL with one tile-part per resolution level, indexed by TLM: AHI's progressive layout.
    codestream = bytes(imagecodecs.htj2k_encode(frame, reversible=True, tlm=True, tilepart=1))
    return wrap_jph(codestream), True


def stored_syntax(ds: Dataset, storage_format: str) -> str | None:
    """The transfer syntax AHI stores this instance's frames in; None when it has no pixel data."""
    if "PixelData" not in ds:
        return None
    source = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if source in KEPT_AS_IMPORTED:
        return source
    if int(ds.get("BitsAllocated", 0)) == 1 and source in _UNCOMPRESSED:
        return ts.EXPLICIT_VR_LITTLE_ENDIAN
    return ts.JPEG_2000_LOSSLESS if storage_format == "JPEG_2000_LOSSLESS" else ts.HTJ2K_LOSSLESS_RPCL


#: imagecodecs decoders for syntaxes AHI accepts whose frames pydicom's plugins may fail on
#: (Pillow refuses 12-bit JPEG Extended; libjpeg refuses some of its streams).
_IMAGECODECS_DECODERS = {
    "1.2.840.10008.1.2.4.51": "jpeg8_decode",  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57": "ljpeg_decode",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "ljpeg_decode",  # JPEG Lossless, first-order prediction
    "1.2.840.10008.1.2.4.80": "jpegls_decode",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "jpegls_decode",  # JPEG-LS near-lossless
}


def _source_frames(ds: Dataset) -> Iterator[np.ndarray]:
    """Every frame's stored values: pydicom's decode, else imagecodecs' where pydicom's plugins cannot."""
    # raw=True keeps YBR samples as they are: the metadata keeps the source's photometric.
    frames = iter_pixels(ds, raw=True)
    try:
        first = next(frames)
    except StopIteration:
        return
    except Exception as exc:  # pydicom and its plugins raise many types
        fallback = _imagecodecs_frames(ds)
        if fallback is None:
            raise PixelDataProblem(f"cannot decode pixel data: {exc}") from exc
        yield from fallback
        return
    yield first
    try:
        yield from frames
    except Exception as exc:
        raise PixelDataProblem(f"cannot decode pixel data: {exc}") from exc


def _imagecodecs_frames(ds: Dataset) -> Iterator[np.ndarray] | None:
    """The frames decoded by imagecodecs, as pydicom would give them; None where it has no decoder."""
    name = _IMAGECODECS_DECODERS.get(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if name is None or not hasattr(imagecodecs, name):
        return None
    decode = getattr(imagecodecs, name)
    rows, columns, samples = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1))
    bits = int(ds.get("BitsStored", ds.BitsAllocated))
    signed = int(ds.get("PixelRepresentation", 0)) == 1

    def frames() -> Iterator[np.ndarray]:
        count = int(ds.get("NumberOfFrames", 1) or 1)
        for number, chunk in enumerate(generate_frames(ds.PixelData, number_of_frames=count), start=1):
            try:
                frame = np.asarray(decode(chunk))
            except Exception as exc:
                raise PixelDataProblem(f"cannot decode pixel data of frame {number}: {exc}") from exc
            expected = (rows, columns) if samples == 1 else (rows, columns, samples)
            if frame.shape != expected:
                raise PixelDataProblem(f"frame {number} decodes to {frame.shape}, the metadata says {expected}")
            if signed:  # two's complement within BitsStored, as pydicom reads it
                wide = frame.astype(np.int32)
                wide[wide >= 2 ** (bits - 1)] -= 2**bits
                frame = wide.astype(np.int16 if int(ds.BitsAllocated) == 16 else np.int8)
            yield frame

    return frames()


def store_frames(ds: Dataset, storage_format: str) -> tuple[str | None, list[StoredFrame]]:
    """Encode (or keep) every frame of ``ds``; returns the stored transfer syntax and the frames."""
    syntax = stored_syntax(ds, storage_format)
    if syntax is None:
        return None, []
    pixel = PixelDescription(
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1)),
        bits_allocated=int(ds.BitsAllocated),
        bits_stored=int(ds.get("BitsStored", ds.BitsAllocated)),
        pixel_representation=int(ds.get("PixelRepresentation", 0)),
        # The photometric decides how a JPEG is decoded (RGB ones carry no colour transform): the
        # checksum must be of the pixels a client's decoder gives, which reads it from the metadata.
        photometric_interpretation=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        planar_configuration=int(ds.get("PlanarConfiguration", 0) or 0),
        number_of_frames=int(ds.get("NumberOfFrames", 1) or 1),
    )
    if syntax in KEPT_AS_IMPORTED:
        return syntax, list(_keep_encapsulated(ds, syntax, pixel))
    if syntax == ts.EXPLICIT_VR_LITTLE_ENDIAN:
        return syntax, [_pack_bits(frame, pixel) for frame in _source_frames(ds)]
    frames = []
    for index, frame in enumerate(_source_frames(ds)):
        if frame.dtype.kind == "f":
            raise PixelDataProblem("floating point pixel data cannot be stored losslessly")
        frames.append(_encode_verified(frame, storage_format, pixel, index + 1))
    return syntax, frames


def _encode_verified(frame: np.ndarray, storage_format: str, pixel: PixelDescription, number: int) -> StoredFrame:
    """Encode and check the round trip; encode again if it fails, as OpenJPH rarely does under threads."""
    problem = f"pixel data verification failed for frame {number}"
    for _ in range(_ENCODE_ATTEMPTS):
        try:
            data, reducible = _encode(frame, storage_format)
            decoded = decode_frame(data, pixel=pixel)
            if decoded.shape == frame.shape and pixel_crc32(decoded) == pixel_crc32(frame.astype(decoded.dtype)):
                return _stored(data, decoded, pixel.frame_bytes, reducible)
        except Exception as exc:  # codec errors: try again, report the last one
            problem = f"frame {number} could not be encoded: {exc}"
    raise PixelDataProblem(problem)


def _keep_encapsulated(ds: Dataset, syntax: str, pixel: PixelDescription) -> Iterator[StoredFrame]:
    try:
        chunks = list(generate_frames(ds.PixelData, number_of_frames=pixel.number_of_frames))
    except Exception as exc:
        raise PixelDataProblem(f"cannot split encapsulated pixel data: {exc}") from exc
    for index, chunk in enumerate(chunks):
        try:
            decoded = decode_frame(chunk, transfer_syntax=syntax, pixel=pixel)
        except Exception as exc:
            raise PixelDataProblem(f"frame {index + 1} cannot be decoded: {exc}") from exc
        yield _stored(chunk, decoded, pixel.frame_bytes, reducible=syntax == ts.HTJ2K, original=True)


def _pack_bits(frame: np.ndarray, pixel: PixelDescription) -> StoredFrame:
    bits = np.ascontiguousarray(frame, dtype=np.uint8)
    data = np.packbits(bits.reshape(-1), bitorder="little").tobytes()
    return _stored(data, bits, pixel.frame_bytes, reducible=False)
