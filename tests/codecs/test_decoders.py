"""Every decoder path is bit-exact; sniffing beats wrong headers; checksums catch corruption."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array

from ahi_torch.codecs import (
    backends_for,
    decode_frame,
    frame_kind,
    inspect_codestream,
    is_boxed,
    pixel_crc32,
    verify_pixels,
    wrap_jph,
)
from ahi_torch.errors import ChecksumMismatch, DecodeError
from ahi_torch.metadata import PixelDescription

from ..conftest import real_file

RNG = np.random.default_rng(7)
CT = np.clip(RNG.normal(0, 400, (64, 48)), -2000, 3000).astype(np.int16)
MR = RNG.integers(0, 4096, (40, 56), dtype=np.uint16)
RGB = RNG.integers(0, 256, (30, 20, 3), dtype=np.uint8)


def _pixel(array: np.ndarray, **overrides: int) -> PixelDescription:
    samples = array.shape[2] if array.ndim == 3 else 1
    return PixelDescription(
        rows=array.shape[0],
        columns=array.shape[1],
        samples_per_pixel=samples,
        bits_allocated=array.dtype.itemsize * 8,
        bits_stored=array.dtype.itemsize * 8,
        pixel_representation=int(array.dtype.kind == "i"),
        photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2",
        **overrides,
    )


@pytest.mark.parametrize("array", [CT, MR, RGB], ids=["int16", "uint16", "rgb8"])
@pytest.mark.parametrize("backend", ["imagecodecs", "openjpeg"])
@pytest.mark.parametrize("boxed", [True, False], ids=["jph", "codestream"])
def test_htj2k_paths(array: np.ndarray, backend: str, boxed: bool) -> None:
    codestream = bytes(imagecodecs.htj2k_encode(array, reversible=True, tlm=True))
    data = wrap_jph(codestream) if boxed else codestream
    assert frame_kind(data) == "htj2k" and is_boxed(data) == boxed
    decoded = decode_frame(data, content_type="image/jph", pixel=_pixel(array), prefer=backend)
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)
    assert pixel_crc32(decoded) == pixel_crc32(array)


@pytest.mark.parametrize("backend", ["imagecodecs", "openjpeg"])
def test_jpeg2000_paths(backend: str) -> None:
    data = bytes(imagecodecs.jpeg2k_encode(CT, level=0, reversible=True, codecformat="J2K", numthreads=1))
    assert frame_kind(data, content_type="image/jph") == "j2k", "bytes without a CAP marker are classic JPEG 2000"
    np.testing.assert_array_equal(decode_frame(data, prefer=backend, pixel=_pixel(CT)), CT)


def test_jph_box_header_describes_the_codestream() -> None:
    jph = wrap_jph(bytes(imagecodecs.htj2k_encode(CT, reversible=True)))
    info = inspect_codestream(jph)
    assert (info.width, info.height, info.components, info.bits, info.signed, info.high_throughput) == (
        48,
        64,
        1,
        16,
        True,
        True,
    )


def test_reduced_resolution() -> None:
    data = wrap_jph(bytes(imagecodecs.htj2k_encode(CT, reversible=True, tlm=True)))
    assert decode_frame(data, reduce=1).shape == (32, 24)
    assert decode_frame(data, reduce=2).shape == (16, 12)
    with pytest.raises(DecodeError, match="reduced"):
        decode_frame(bytes(imagecodecs.jpeg2k_encode(CT, level=0, reversible=True, codecformat="J2K")), reduce=1)


def test_jpeg_baseline_matches_pydicom() -> None:
    ds = pydicom.dcmread(real_file("SC_rgb_jpeg_dcmtk.dcm"))
    (frame,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    pixel = PixelDescription(
        rows=ds.Rows, columns=ds.Columns, samples_per_pixel=3, bits_allocated=8, photometric_interpretation="YBR_FULL"
    )
    decoded = decode_frame(frame, content_type="image/jpeg", pixel=pixel)
    np.testing.assert_array_equal(decoded, pixel_array(ds, decoding_plugin="pillow"))


def test_rgb_photometric_jpeg_is_not_colour_converted() -> None:
    ds = pydicom.dcmread(real_file("SC_jpeg_no_color_transform.dcm"))
    (frame,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    pixel = PixelDescription(
        rows=ds.Rows, columns=ds.Columns, samples_per_pixel=3, bits_allocated=8, photometric_interpretation="RGB"
    )
    np.testing.assert_array_equal(
        decode_frame(frame, content_type="image/jpeg", pixel=pixel), pixel_array(ds, decoding_plugin="pillow")
    )


@pytest.mark.parametrize("array", [CT, MR, RGB], ids=["int16", "uint16", "rgb8"])
def test_raw_little_endian(array: np.ndarray) -> None:
    data = array.astype(array.dtype.newbyteorder("<")).tobytes()
    np.testing.assert_array_equal(
        decode_frame(data, content_type="application/octet-stream", pixel=_pixel(array)), array
    )


def test_raw_planar_configuration() -> None:
    planar = np.ascontiguousarray(RGB.transpose(2, 0, 1)).tobytes()
    decoded = decode_frame(planar, transfer_syntax="1.2.840.10008.1.2.1", pixel=_pixel(RGB, planar_configuration=1))
    np.testing.assert_array_equal(decoded, RGB)


def test_bit_packed_binary_segmentation() -> None:
    mask = RNG.integers(0, 2, (7, 9), dtype=np.uint8)  # 63 pixels: not byte aligned
    packed = np.packbits(mask.reshape(-1), bitorder="little").tobytes()
    pixel = PixelDescription(rows=7, columns=9, bits_allocated=1, bits_stored=1)
    np.testing.assert_array_equal(decode_frame(packed, content_type="application/octet-stream", pixel=pixel), mask)
    with pytest.raises(DecodeError, match="expected 63"):
        decode_frame(packed[:-2], content_type="application/octet-stream", pixel=pixel)


def test_raw_needs_a_pixel_description() -> None:
    with pytest.raises(DecodeError, match="pixel description"):
        decode_frame(b"\x00" * 16, content_type="application/octet-stream")


@pytest.mark.parametrize("backend", ["imagecodecs", "openjpeg"])
def test_truncated_codestream_never_passes_verification(backend: str) -> None:
    """Decoders tolerate truncation (OpenJPH returns partial pixels): only the checksum catches it."""
    data = wrap_jph(bytes(imagecodecs.htj2k_encode(CT, reversible=True)))
    truncated = data[: len(data) // 2]
    levels = [{"Width": 48, "Height": 64, "Checksum": pixel_crc32(CT)}]
    decoded = decode_frame(truncated, pixel=_pixel(CT), prefer=backend)  # both backends return partial pixels
    assert decoded.shape == CT.shape and not np.array_equal(decoded, CT)
    with pytest.raises(ChecksumMismatch):
        verify_pixels(decoded, levels, where="truncated frame")


def test_checksum_verification_names_the_frame() -> None:
    levels = [{"Width": 48, "Height": 64, "Checksum": pixel_crc32(CT)}]
    verify_pixels(CT, levels, where="image set X frame Y")
    flipped = CT.copy()
    flipped[10, 10] ^= 1
    with pytest.raises(ChecksumMismatch, match="image set X frame Y"):
        verify_pixels(flipped, levels, where="image set X frame Y")


def test_backends_are_registered_fastest_first() -> None:
    assert [b.name for b in backends_for("htj2k")] == ["imagecodecs", "openjpeg"]
    assert [b.name for b in backends_for("htj2k", prefer="openjpeg")] == ["openjpeg", "imagecodecs"]


def test_openjph_failures_are_errors_not_printed_noise(capfd: pytest.CaptureFixture[str]) -> None:
    """imagecodecs reports OpenJPH's "ojph error" from a C callback as unraisable; ahi_torch makes it an error."""
    import sys

    from ahi_torch.codecs.decoders import _imagecodecs_htj2k

    damaged = bytearray(imagecodecs.htj2k_encode(CT, reversible=True))
    damaged[len(damaged) - 20] ^= 0x5A  # a damaged code-block: OpenJPH gives up inside its callback
    printed: list[str] = []
    previous, sys.unraisablehook = sys.unraisablehook, lambda u: printed.append(str(u.exc_value))
    try:
        with pytest.raises(RuntimeError, match="OpenJPH could not decode the codestream"):
            _imagecodecs_htj2k(bytes(damaged), None, 0)
        # decode_frame then tries the next backend; here OpenJPEG gives up too: one DecodeError naming both.
        with pytest.raises(DecodeError, match=r"imagecodecs: OpenJPH could not decode .*; openjpeg: "):
            decode_frame(bytes(damaged), pixel=_pixel(CT), prefer="imagecodecs")
        np.testing.assert_array_equal(decode_frame(bytes(imagecodecs.htj2k_encode(CT, reversible=True))), CT)
    finally:
        sys.unraisablehook = previous
    assert printed == [], "nothing reaches the unraisable hook"
    # Cython also prints the error through sys.excepthook (PyErr_PrintEx) before reporting it.
    assert "ojph" not in capfd.readouterr().err, "nothing is printed to stderr"
