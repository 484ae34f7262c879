"""Decode AHI image frames to numpy, sniffing the bytes, and verify them against AHI's checksums.

>>> from ahi_torch.codecs import decode_frame, verify_pixels
>>> pixels = decode_frame(frame_bytes, content_type="image/jph", pixel=instance.pixel)
>>> verify_pixels(pixels, frame.checksums, where=f"image set {image_set_id} frame {frame.id}")
"""

from .checksum import expected_checksum, pixel_crc32, verify_pixels
from .decoders import BACKENDS, Backend, backends_for, decode_frame, frame_kind, sniff_kind
from .jph import inspect_codestream, is_boxed, is_codestream, is_htj2k, wrap_jph
from .transfer_syntax import DEFAULT_STORED, content_type_for

__all__ = [
    "BACKENDS",
    "DEFAULT_STORED",
    "Backend",
    "backends_for",
    "content_type_for",
    "decode_frame",
    "expected_checksum",
    "frame_kind",
    "inspect_codestream",
    "is_boxed",
    "is_codestream",
    "is_htj2k",
    "pixel_crc32",
    "sniff_kind",
    "verify_pixels",
    "wrap_jph",
]
