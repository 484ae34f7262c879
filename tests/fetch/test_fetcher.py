"""FrameFetcher: cache hits, exact pixels, checksum retries and failures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ahi_torch.cache import FrameCache
from ahi_torch.counters import counting
from ahi_torch.datasets._table import FrameTable
from ahi_torch.errors import ChecksumMismatch
from ahi_torch.fetch import FrameFetcher, RetryPolicy
from ahi_torch.index import FrameIndex, build_index, search
from ahi_torch.local import LocalAHI

from ..conftest import ImportedData


@pytest.fixture(scope="module")
def ct_index(ahi: LocalAHI, synthetic_import: ImportedData) -> FrameIndex:
    spec = synthetic_import.specs["ct"]
    return build_index(
        ahi.client(), synthetic_import.datastore_id, filters=[search.series_uid(spec.series_uid)], progress=False
    )


def _sources(synthetic_import: ImportedData) -> dict[str, np.ndarray]:
    return {
        ds.SOPInstanceUID: ds.pixel_array
        for ds in (pydicom.dcmread(p) for p in (synthetic_import.root / "ct").glob("*.dcm"))
    }


@pytest.mark.parametrize("mode", ["decoded", "encoded"])
def test_fetch_verify_and_cache(
    ahi: LocalAHI, synthetic_import: ImportedData, ct_index: FrameIndex, tmp_path: Path, mode: str
) -> None:
    sources = _sources(synthetic_import)
    fetcher = FrameFetcher(ahi.client(), cache=FrameCache(tmp_path, mode=mode), verify=True)
    table = FrameTable(ct_index)
    refs = [table.ref(i) for i in range(len(ct_index))]
    sops = ct_index.texts("sop_instance_uid")
    with counting() as cold:
        first = fetcher.get_many(refs)
    for pixels, sop in zip(first, sops, strict=True):
        np.testing.assert_array_equal(pixels, sources[sop])
    assert cold.requests == cold.cache_misses == len(refs) and cold.cache_hits == 0
    with counting() as warm:
        second = fetcher.get_many(refs)
    assert warm.requests == 0, "the second pass is served from the cache"
    assert warm.cache_hits == len(refs) and warm.cache_misses == 0, "a hit is counted once, by the cache"
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_wrong_checksum_is_retried_then_raised(ahi: LocalAHI, ct_index: FrameIndex) -> None:
    ref = FrameTable(ct_index).ref(0)
    bad = dataclasses.replace(ref, checksum=(ref.checksum or 0) ^ 0xFFFF)
    fetcher = FrameFetcher(ahi.client(), verify=True, retry=RetryPolicy(max_attempts=3, base_delay=0.001))
    with (
        counting() as counted,
        pytest.raises(ChecksumMismatch, match=f"image set {ref.image_set_id} \\(version 1\\) frame {ref.frame_id}"),
    ):
        fetcher.get(bad)
    assert (counted.requests, counted.frame_retries, counted.checksum_retries, counted.checksum_failures) == (
        3,
        2,
        3,
        1,
    )
    unverified = FrameFetcher(ahi.client(), verify=False)
    assert unverified.get(bad).shape == (96, 80)


def test_reduced_resolution_preview(ahi: LocalAHI, ct_index: FrameIndex, tmp_path: Path) -> None:
    fetcher = FrameFetcher(ahi.client(), cache=FrameCache(tmp_path), reduce=1)
    assert fetcher.get(FrameTable(ct_index).ref(0)).shape == (48, 40)


def test_frames_are_laid_out_by_resolution_as_ahi_does(ahi: LocalAHI, ct_index: FrameIndex) -> None:
    """One tile-part per level with TLM, jp2c box of length 0, brand 'jp2 ' (AWS's own fixtures)."""
    import struct

    from ahi_torch.codecs import decode_frame
    from ahi_torch.codecs.jph import codestream_of, tile_part_ends

    ref = FrameTable(ct_index).ref(0)
    frame = ahi.client().frame_transport.get(ref.datastore_id, ref.image_set_id, ref.frame_id)
    data = frame.data
    assert data[12:24] == struct.pack(">I4s4s", 24, b"ftyp", b"jp2 "), "brand jp2 "
    jp2c = data.index(b"jp2c") - 4
    assert struct.unpack_from(">I", data, jp2c)[0] == 0, "the codestream box runs to the end of the file"
    stream = codestream_of(data)
    assert b"\xff\x55" in stream[: stream.index(b"\xff\x90")], "a TLM marker in the main header"
    ends = tile_part_ends(data)
    assert len(ends) >= 4 and ends[-1] == len(data) - 2, "one tile-part per level, then EOC"
    full = decode_frame(data)
    for reduce in range(1, len(ends)):
        part = data[: ends[len(ends) - 1 - reduce]]
        np.testing.assert_array_equal(decode_frame(part, reduce=reduce), decode_frame(data, reduce=reduce))
    assert full.shape == (96, 80)


def test_progressive_reads_stop_at_the_level_decoded(ahi: LocalAHI, ct_index: FrameIndex) -> None:
    from ahi_torch.codecs import decode_frame

    table = FrameTable(ct_index)
    refs = [table.ref(i) for i in range(6)]
    full = FrameFetcher(ahi.client())
    whole = [full.client.frame_transport.get(r.datastore_id, r.image_set_id, r.frame_id).data for r in refs]
    for reduce in (1, 2):
        progressive = FrameFetcher(ahi.client(), reduce=reduce)
        complete = FrameFetcher(ahi.client(), reduce=reduce, progressive=False)
        with counting() as read_in_part:
            reduced_frames = [progressive.get(ref) for ref in refs]
        with counting() as read_whole:
            for ref, data, reduced in zip(refs, whole, reduced_frames, strict=True):
                np.testing.assert_array_equal(reduced, decode_frame(data, reduce=reduce))
                np.testing.assert_array_equal(complete.get(ref), reduced)
        assert read_whole.bytes_fetched == sum(len(d) for d in whole)
        assert read_in_part.bytes_fetched < read_whole.bytes_fetched / (1.5 * reduce)


def test_reduced_reads_are_verified_where_ahi_lists_a_checksum(ahi: LocalAHI, ct_index: FrameIndex) -> None:
    """AHI lists CRC32s for reduced decodes; the index keeps them and reduced reads are checked against them."""
    reduced = ct_index.column("reduced_checksums")
    assert (reduced[:, :2] >= 0).all() and (reduced[:, 2:] == -1).all(), "reduce 1 and 2 are listed for 96x80"
    ref = FrameTable(ct_index).ref(0)
    assert ref.checksum_at(1) == int(reduced[0, 0]) and ref.checksum_at(3) is None
    bad = dataclasses.replace(ref, reduced_checksums=(ref.reduced_checksums[0], ref.reduced_checksums[1] ^ 1, -1, -1))
    fetcher = FrameFetcher(ahi.client(), reduce=2, retry=RetryPolicy(max_attempts=2, base_delay=0.001))
    assert fetcher.get(ref).shape == (24, 20)
    with pytest.raises(ChecksumMismatch, match="at reduce=2"):
        fetcher.get(bad)
    assert FrameFetcher(ahi.client(), reduce=3).get(bad).shape == (12, 10), "no checksum listed: not checked"


def test_fetch_settings_out_of_range_are_refused() -> None:
    """The edges of every fetch setting: the last value allowed works, the first one past it is refused."""
    from ahi_torch.client import AHIClient
    from ahi_torch.errors import ConfigError

    client = AHIClient(region="us-east-1")
    for reduce in (0, 4):
        assert FrameFetcher(client, reduce=reduce).reduce == reduce
    for reduce in (-1, 5):
        with pytest.raises(ConfigError, match="reduce must be between 0"):
            FrameFetcher(client, reduce=reduce)
    with pytest.raises(ConfigError, match="max_workers must be at least 1"):
        FrameFetcher(client, max_workers=0)
    with pytest.raises(ConfigError, match="decoder"):
        FrameFetcher(client, decoder="pillow")
    assert RetryPolicy(max_attempts=1).max_attempts == 1
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError, match="max_throttled_seconds"):
        RetryPolicy(max_throttled_seconds=0)
