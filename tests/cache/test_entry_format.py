"""Cache entries byte by byte, and a frame cache's round trip in both modes, without the service."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from ahi_torch.cache import FrameCache
from ahi_torch.cache import entry_format as fmt
from ahi_torch.cache.frame_cache import FrameKey, default_directory
from ahi_torch.counters import counting

KEY = FrameKey("d" * 32, "i" * 32, 1, "f" * 32)


def _entry(pixels: np.ndarray) -> bytes:
    return b"".join(bytes(part) for part in fmt.pack_array(pixels, "decoded/k"))


def test_every_flipped_payload_byte_and_every_truncation_is_refused() -> None:
    pixels = np.arange(64, dtype=np.int16).reshape(8, 8)
    entry = _entry(pixels)
    np.testing.assert_array_equal(fmt.unpack_array(bytearray(entry)), pixels)
    payload_start = len(entry) - pixels.nbytes
    for position in range(payload_start, len(entry)):
        for bit in (0, 7):  # raise and lower the CRC alike
            flipped = bytearray(entry)
            flipped[position] ^= 1 << bit
            with pytest.raises(fmt.CorruptEntry, match="CRC32"):
                fmt.unpack_array(flipped)
    for length in range(len(entry)):
        with pytest.raises(fmt.CorruptEntry):
            fmt.unpack_array(bytearray(entry[:length]))


def test_a_shape_that_does_not_match_the_payload_is_refused() -> None:
    pixels = np.arange(64, dtype=np.int16).reshape(8, 8)
    head_size = fmt.HEAD.size  # the header ends with the header JSON's length (u32) and the payload's (u64)
    for shape in ([4, 8], [16, 8]):  # fewer and more pixels than the payload holds; the CRC still matches
        meta = json.dumps({"dtype": "<i2", "shape": shape}, separators=(",", ":")).encode()
        head = bytearray(_entry(pixels)[:head_size])
        struct.pack_into("<I", head, head_size - 12, len(meta))
        with pytest.raises(fmt.CorruptEntry, match="wrong number of bytes"):
            fmt.unpack_array(bytearray(bytes(head) + meta + pixels.tobytes()))


def test_an_entry_says_its_own_length_and_nothing_else_is_taken_for_it() -> None:
    """Entries sit back to back in packs: each header gives its length, and a wrong length is refused."""
    pixels = np.arange(64, dtype=np.int16).reshape(8, 8)
    entry = b"".join(bytes(part) for part in fmt.pack_array(pixels, key="decoded/k"))
    assert fmt.entry_size(entry + b"next entry") == len(entry)
    assert fmt.unpack(entry).key == "decoded/k"
    with pytest.raises(fmt.CorruptEntry, match="header says"):
        fmt.unpack(entry + b"\0")
    with pytest.raises(fmt.CorruptEntry, match="not an ahi_torch cache entry"):
        fmt.entry_size(b"AHIC\x01" + entry[5:])  # format 1 (a file per entry) is not read as format 2


def test_a_frame_key_reads_full_resolution_by_default() -> None:
    assert KEY.text("decoded") == FrameKey("d" * 32, "i" * 32, 1, "f" * 32, reduce=0).text("decoded")


@pytest.mark.parametrize("mode", ["decoded", "encoded"])
def test_a_full_size_frame_round_trips_in_either_mode(mode: str, tmp_path: Path) -> None:
    """512x512 int16 (512 KB): stored as a file of its own, read back whole."""
    pixels = np.random.default_rng(0).integers(-1024, 3000, (512, 512), dtype=np.int16)
    cache = FrameCache(tmp_path / mode, mode=mode)
    seen: list[tuple[bytes, str]] = []

    def decode(data: bytes, content_type: str) -> np.ndarray:
        seen.append((data, content_type))
        return np.frombuffer(data, dtype=np.int16).reshape(512, 512)

    with counting() as counted:
        assert cache.get_frame(KEY, decode) is None
        assert cache.put_frame(KEY, pixels, pixels.tobytes(), "application/octet-stream")
        again = cache.get_frame(KEY, decode)
    assert again is not None and (counted.cache_misses, counted.cache_hits) == (1, 1)
    np.testing.assert_array_equal(again, pixels)
    if mode == "decoded":
        assert seen == [] and cache._get_bytes(KEY.text("encoded")) is None
    else:
        assert seen == [(pixels.tobytes(), "application/octet-stream")], "the stored bytes, decoded on read"
        assert cache._get_array(KEY.text("decoded")) is None
    assert repr(cache).endswith("size_limit=20 GiB)")


def test_the_default_folder_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_directory() == tmp_path / "xdg" / "ahi_torch" / "frames"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_directory() == tmp_path / "home" / ".cache" / "ahi_torch" / "frames"
