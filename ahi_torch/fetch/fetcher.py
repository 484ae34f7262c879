"""FrameFetcher: how a frame is obtained. Cache, then request, verify, decode, store; retried in one place.

>>> fetcher = FrameFetcher(client, cache=FrameCache(), verify=True)
>>> pixels = fetcher.get(ref)                      # numpy (rows, columns[, samples])
>>> futures = fetcher.submit_many(refs)            # concurrent within this process
>>> stack = [future.result() for future in futures]

A frame's trip::

    cache.get_frame(key)  ──hit──▶ pixels
        │ miss
        ▼
    transport.get  ─▶  decode  ─▶  CRC32 vs AHI's checksum  ─▶  cache.put_frame  ─▶ pixels
        ▲                                 │
        └──── transient failure, at most RetryPolicy.max_attempts in all ────┘

The cache decides how a frame is stored (:meth:`FrameCache.put_frame`); the transport makes one
signed request per call; :mod:`.retry` decides what is tried again. A frame that still fails
raises its last error (:class:`ChecksumMismatch`, :class:`DecodeError`, :class:`Throttled`...) with
``error.attempts`` set; wrong pixels never reach the caller.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cache import FrameCache
from ..client import AHIClient, ImageFrame
from ..codecs import decode_frame, pixel_crc32
from ..codecs import transfer_syntax as ts
from ..codecs.decoders import PREFERENCES
from ..codecs.jph import level_end
from ..counters import COUNTERS
from ..errors import ChecksumMismatch, ConfigError, DecodeError, EndpointUnreachable, InternalServerError, Throttled
from ..index.columns import MAX_REDUCE
from ..per_process import PerProcess
from .ref import FrameRef
from .retry import RetryPolicy

_FAILURE_COUNTER = (
    (Throttled, "throttled"),
    (InternalServerError, "server_errors"),
    (EndpointUnreachable, "transfer_errors"),
    (ChecksumMismatch, "checksum_retries"),
    (DecodeError, "decode_errors"),
)


def check_fetch_options(reduce: int, max_workers: int, decoder: str | None) -> None:
    """Refuse settings no fetcher can use (a fetcher and the config's ``fetch:`` section both ask here)."""
    if not 0 <= reduce <= MAX_REDUCE:
        raise ConfigError(
            f"reduce must be between 0 (full resolution) and {MAX_REDUCE} (the levels AHI lists checksums for), "
            f"not {reduce}"
        )
    if max_workers < 1:
        raise ConfigError(f"max_workers must be at least 1, not {max_workers}")
    if decoder is not None and decoder not in PREFERENCES:
        raise ConfigError(f"decoder: {decoder!r} is not one of {', '.join(PREFERENCES)}")


@dataclass
class FrameFetcher:
    """Fetch frames through a cache with verification; safe to pickle into DataLoader workers.

    Args:
        client: the AHI client; frames travel over its :attr:`~AHIClient.frame_transport`.
        cache: a :class:`FrameCache`, or None to always fetch.
        verify: compare decoded pixels with AHI's CRC32, at full resolution and at the reduced
            resolutions AHI lists a checksum for (``reduce`` of 1 and 2 for frames it transcoded).
        max_workers: threads for :meth:`submit_many`; HTJ2K decoding releases the GIL.
        reduce: resolution levels to skip when decoding HTJ2K (1 halves each side).
        decoder: preferred backend name (``"imagecodecs"`` or ``"openjpeg"``).
        retry: the :class:`RetryPolicy` (at most 4 requests per frame by default).
        progressive: with ``reduce``, read HTJ2K frames only up to the resolution level decoded
            (AHI stores one tile-part per level); the connection is then closed, not reused.
    """

    client: AHIClient
    cache: FrameCache | None = None
    verify: bool = True
    max_workers: int = 8
    reduce: int = 0
    decoder: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    progressive: bool = True

    def __post_init__(self) -> None:
        check_fetch_options(self.reduce, self.max_workers, self.decoder)
        self._pool = PerProcess(self._make_pool)

    def _make_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="ahi-fetch")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool = PerProcess(self._make_pool)

    # --- one frame --------------------------------------------------------------------------------

    def decode(self, ref: FrameRef, data: bytes, content_type: str | None) -> np.ndarray:
        """Decode a frame's bytes as this fetcher does (backend, resolution, dtype)."""
        return decode_frame(
            data,
            transfer_syntax=ref.stored_transfer_syntax,
            content_type=content_type,
            pixel=ref.pixel,
            reduce=self.reduce,
            prefer=self.decoder,
        )

    def verified_crc(self, ref: FrameRef, pixels: np.ndarray) -> int | None:
        """The pixels' CRC32 once checked against AHI's at this fetcher's resolution; None where AHI lists none.

        Raises :class:`ChecksumMismatch` for pixels that differ. The fetch path and ``ahi-torch
        cache verify`` both check frames here, so a cache filled at ``reduce=2`` is compared with
        AHI's checksum of that resolution, not of the full one.
        """
        expected = ref.checksum_at(self.reduce) if self.verify else None
        if expected is None:
            return None
        actual = pixel_crc32(pixels)
        if actual != expected:
            raise ChecksumMismatch(ref.where() + (f" at reduce={self.reduce}" if self.reduce else ""), expected, actual)
        return actual

    def _attempt(self, ref: FrameRef) -> tuple[ImageFrame, np.ndarray, int | None]:
        COUNTERS.requests += 1
        transport = self.client.frame_transport
        if self.reduce and self.progressive and ref.stored_transfer_syntax in ts.HTJ2K_SYNTAXES:
            # AHI's HTJ2K frames hold one tile-part per resolution level: stop reading at ours.
            frame = transport.get_prefix(
                ref.datastore_id, ref.image_set_id, ref.frame_id, functools.partial(level_end, reduce=self.reduce)
            )
        else:
            frame = transport.get(ref.datastore_id, ref.image_set_id, ref.frame_id)
        COUNTERS.bytes_fetched += len(frame.data)
        pixels = self.decode(ref, frame.data, frame.content_type)
        return frame, pixels, self.verified_crc(ref, pixels)

    def download(self, ref: FrameRef) -> tuple[ImageFrame, np.ndarray, int | None]:
        """Request, decode and verify one frame, retrying transient failures (the cache is not consulted).

        Throttles are waited out (the transport lowers its rate) for up to
        ``retry.max_throttled_seconds``; other transient failures use up one of
        ``retry.max_attempts``; endpoint failures are raised at once.
        """
        policy = self.retry
        attempt = throttles = 0
        throttled_since: float | None = None
        while True:
            try:
                return self._attempt(ref)
            except Exception as error:
                if not policy.is_transient(error):
                    raise
                self._count_failure(error)
                if policy.is_throttle(error):
                    throttles += 1
                    throttled_since = throttled_since or time.monotonic()
                    if time.monotonic() - throttled_since < policy.max_throttled_seconds:
                        COUNTERS.frame_retries += 1
                        time.sleep(policy.delay(throttles))
                        continue
                else:
                    attempt += 1
                    throttles = 0
                    if attempt < policy.max_attempts:
                        COUNTERS.frame_retries += 1
                        time.sleep(policy.delay(attempt))
                        continue
                COUNTERS.frames_failed += 1
                COUNTERS.checksum_failures += isinstance(error, ChecksumMismatch)
                error.attempts = max(1, attempt)  # type: ignore[attr-defined]
                raise

    def _count_failure(self, error: Exception) -> None:
        for kind, counter in _FAILURE_COUNTER:
            if isinstance(error, kind):
                setattr(COUNTERS, counter, getattr(COUNTERS, counter) + 1)
                return

    def cached(self, ref: FrameRef) -> np.ndarray | None:
        """The frame's pixels if the cache holds them (decoded on the way for encoded caches)."""
        if self.cache is None:
            return None
        return self.cache.get_frame(ref.key(self.reduce), lambda data, kind: self.decode(ref, data, kind))

    def get(self, ref: FrameRef) -> np.ndarray:
        """The frame's pixels (from the cache when present), verified against AHI's checksum."""
        cached = self.cached(ref)
        if cached is not None:
            return cached
        return self._fetch(ref)

    def _fetch(self, ref: FrameRef) -> np.ndarray:
        """Download, decode, verify and store a frame the cache did not hold."""
        frame, pixels, crc = self.download(ref)
        if self.cache is not None:
            self.cache.put_frame(ref.key(self.reduce), pixels, frame.data, frame.content_type, crc)
        return pixels

    # --- many frames ------------------------------------------------------------------------------

    def submit_many(self, refs: Sequence[FrameRef]) -> list[Future[np.ndarray]]:
        """Start fetching ``refs`` on this process's threads; one future per frame, in order.

        Where a cache read is a lookup and a copy (:attr:`FrameCache.reads_decode` false), frames the
        cache holds are read here and now: handing such a read to a thread costs more CPU than the
        read itself. Reads that decode stay on the threads, which decode in parallel, and their
        failures reach the caller through the future, as a download's do.
        """
        executor = self._pool.get()
        if self.cache is None or self.cache.reads_decode:
            return [executor.submit(self.get, ref) for ref in refs]
        futures: list[Future[np.ndarray]] = []
        for ref in refs:
            cached = self.cached(ref)
            if cached is None:
                futures.append(executor.submit(self._fetch, ref))
                continue
            done: Future[np.ndarray] = Future()
            done.set_result(cached)
            futures.append(done)
        return futures

    def get_many(self, refs: Sequence[FrameRef]) -> list[np.ndarray]:
        """Several frames at once, fetched concurrently; order follows ``refs``."""
        if len(refs) <= 1 or self.max_workers <= 1:
            return [self.get(ref) for ref in refs]
        return [future.result() for future in self.submit_many(refs)]
