"""From frame references to verified pixels: cache, GetImageFrame, decode, CRC check, retry.

>>> fetcher = FrameFetcher(client, cache=FrameCache(), verify=True)
>>> pixels = fetcher.get(ref)                      # numpy (rows, columns[, samples])
>>> stack = fetcher.get_many(refs)                 # concurrent within this process

A frame whose decoded pixels do not match AHI's checksum is fetched again (``mismatch_retries``
times, bypassing the cache) before :class:`~ahi_torch.errors.ChecksumMismatch` is raised, so a
corrupted transfer costs a retry and never trains the model on wrong pixels.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cache import FrameCache, frame_key
from .cache.records import ENCODED
from .client import AHIClient
from .codecs import decode_frame, pixel_crc32
from .errors import ChecksumMismatch, DecodeError
from .metadata import PixelDescription


@dataclass(frozen=True)
class FrameRef:
    """Everything needed to fetch, decode and verify one frame."""

    datastore_id: str
    image_set_id: str
    version: int
    frame_id: str
    stored_transfer_syntax: str
    pixel: PixelDescription
    checksum: int | None = None

    def where(self) -> str:
        return f"image set {self.image_set_id} (version {self.version}) frame {self.frame_id}"


@dataclass
class FetchCounters:
    """Per-process counters of a :class:`FrameFetcher`."""

    requests: int = 0
    cache_hits: int = 0
    bytes_fetched: int = 0
    checksum_retries: int = 0
    checksum_failures: int = 0
    decode_errors: int = 0


@dataclass
class FrameFetcher:
    """Fetch frames through a cache with verification; safe to pickle into DataLoader workers.

    Args:
        client: the AHI client (its boto3 client is built lazily per process).
        cache: a :class:`FrameCache`, or None to always fetch.
        verify: compare decoded pixels with AHI's CRC32 (full-resolution decodes only).
        max_workers: threads for :meth:`get_many`; HTJ2K decoding releases the GIL.
        reduce: resolution levels to skip when decoding HTJ2K (1 halves each side).
        mismatch_retries: refetches of a frame that fails its checksum before giving up.
        decoder: preferred backend name (``"imagecodecs"`` or ``"openjpeg"``).
    """

    client: AHIClient
    cache: FrameCache | None = None
    verify: bool = True
    max_workers: int = 8
    reduce: int = 0
    mismatch_retries: int = 2
    decoder: str | None = None
    counters: FetchCounters = field(default_factory=FetchCounters)

    def __post_init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid: int | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pool=None, _pool_pid=None, _lock=None, counters=FetchCounters())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def executor(self) -> ThreadPoolExecutor:
        pid = os.getpid()
        if self._pool is None or self._pool_pid != pid:
            with self._lock:
                if self._pool is None or self._pool_pid != pid:
                    self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="ahi-fetch")
                    self._pool_pid = pid
        return self._pool

    # --- one frame --------------------------------------------------------------------------------

    def _key(self, ref: FrameRef, kind: str) -> str:
        return frame_key(kind, ref.datastore_id, ref.image_set_id, ref.version, ref.frame_id, self.reduce)

    def _decode(self, ref: FrameRef, data: bytes, content_type: str | None) -> np.ndarray:
        try:
            return decode_frame(
                data,
                transfer_syntax=ref.stored_transfer_syntax,
                content_type=content_type,
                pixel=ref.pixel,
                reduce=self.reduce,
                prefer=self.decoder,
            )
        except DecodeError:
            self.counters.decode_errors += 1
            raise

    def _checks_out(self, ref: FrameRef, pixels: np.ndarray) -> bool:
        if not self.verify or ref.checksum is None or self.reduce:
            return True
        return pixel_crc32(pixels) == ref.checksum

    def _download(self, ref: FrameRef) -> tuple[bytes, str, np.ndarray]:
        """GetImageFrame + decode + verify, refetching on a checksum mismatch or corrupt bytes."""
        last_error: Exception | None = None
        for attempt in range(self.mismatch_retries + 1):
            if attempt:
                self.counters.checksum_retries += 1
            frame = self.client.get_image_frame(
                datastoreId=ref.datastore_id,
                imageSetId=ref.image_set_id,
                imageFrameInformation={"imageFrameId": ref.frame_id},
            )
            self.counters.requests += 1
            self.counters.bytes_fetched += len(frame.data)
            try:
                pixels = self._decode(ref, frame.data, frame.content_type)
            except DecodeError as error:
                last_error = error
                continue
            if self._checks_out(ref, pixels):
                return frame.data, frame.content_type, pixels
            last_error = ChecksumMismatch(ref.where(), int(ref.checksum or 0), pixel_crc32(pixels))
        self.counters.checksum_failures += 1
        if isinstance(last_error, ChecksumMismatch):
            raise last_error
        raise ChecksumMismatch(ref.where(), int(ref.checksum or 0), -1) from last_error

    def cached(self, ref: FrameRef) -> np.ndarray | None:
        """The frame's pixels if the cache holds them (decoded on the way for encoded caches)."""
        cache = self.cache
        if cache is None:
            return None
        if cache.mode == "decoded":
            return cache.get_array(self._key(ref, "decoded"))
        found = cache.get_bytes(self._key(ref, "encoded"), ENCODED)
        if found is None:
            return None
        return self._decode(ref, found[0], str(found[1].get("content_type") or ""))

    def get(self, ref: FrameRef) -> np.ndarray:
        """The frame's pixels (from the cache when present), verified against AHI's checksum."""
        cache = self.cache
        cached = self.cached(ref)
        if cached is not None and (cache is None or cache.mode == "decoded" or self._checks_out(ref, cached)):
            self.counters.cache_hits += 1
            return cached
        data, content_type, pixels = self._download(ref)
        if cache is not None:
            if cache.mode == "decoded":
                cache.put_array(self._key(ref, "decoded"), pixels)
            else:
                cache.put_bytes(self._key(ref, "encoded"), data, {"content_type": content_type})
        return pixels

    def get_many(self, refs: Sequence[FrameRef]) -> list[np.ndarray]:
        """Several frames at once, fetched concurrently; order follows ``refs``."""
        if len(refs) <= 1 or self.max_workers <= 1:
            return [self.get(ref) for ref in refs]
        return list(self.executor().map(self.get, refs))
