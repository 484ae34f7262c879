"""How a process's requests fare at an endpoint: silence (is it down?) and throttling (how fast may we send?).

**Silence.** A service that accepts connections and never answers costs a read timeout per
attempt, and retries multiply it: 8 attempts x 30 s was four minutes of nothing before an index
build failed. :class:`Silence` remembers when the endpoint last answered anything; once no
request has been answered for ``limit`` seconds, the next timeout raises :class:`EndpointDown`
naming the endpoint, whatever layer was about to retry. A warning says so at the first timeout.

**Throttling.** A throttle means "slower", not "this frame is bad". :class:`AdaptiveRate` is
the rate control of botocore's adaptive retry mode (its CUBIC rate calculator and token bucket,
as ``retries={"mode": "adaptive"}`` uses them), fed by the frame path: the send rate drops on a
throttle and grows back slowly, so a throttled process settles at the rate the service grants.

>>> silence = Silence("http://127.0.0.1:8080", limit=45.0)
>>> rate = AdaptiveRate()
>>> rate.before_send(); ...; rate.answered(throttled=False)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from botocore.retries import bucket, throttling

from ..errors import EndpointDown

log = logging.getLogger(__name__)


class Silence:
    """Seconds since the endpoint last answered any request of this process (thread-safe)."""

    def __init__(self, endpoint: str, limit: float) -> None:
        self.endpoint = endpoint
        self.limit = limit
        self._since: float | None = None  # when the oldest request not answered since the last answer went out
        self._warned = False
        self._lock = threading.Lock()

    def sent(self) -> None:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()

    def answered(self) -> None:
        with self._lock:
            self._since, self._warned = None, False

    def silent_for(self) -> float:
        since = self._since
        return 0.0 if since is None else time.monotonic() - since

    def timed_out(self, error: BaseException) -> None:
        """After a request got no answer: raise :class:`EndpointDown` once the silence reached the limit."""
        silent = self.silent_for()
        if silent >= self.limit:
            raise EndpointDown(
                f"{self.endpoint} has not answered for {silent:.0f} s (endpoint_timeout={self.limit:g} s): "
                f"is the service running and reachable? Last error: {error}"
            ) from error
        with self._lock:
            warn, self._warned = not self._warned, True
        if warn:
            log.warning(
                "no answer from %s for %.0f s; retrying, and giving up after %.0f s of silence",
                self.endpoint,
                silent,
                self.limit,
            )


class AdaptiveRate:
    """botocore's CUBIC rate calculator and token bucket, driven by the frame path's own requests.

    Nothing is paced until the first throttle. Then the rate is cut to 0.7 x the rate actually
    sent over the last second and grows back along botocore's cubic curve; throttles within
    ``cooldown`` seconds of the last cut are one event (a burst sent before the first throttle
    came back is answered by a burst of throttles, and cutting for each would drive the rate to
    the floor). botocore's own ``ClientRateLimiter`` measures the sent rate in half-second
    buckets and reads 0 in the first one, which drops a fresh process to 0.5 requests a second;
    here the sent rate is counted directly.
    """

    def __init__(self, cooldown: float = 1.0) -> None:
        self.cooldown = cooldown
        self._clock = bucket.Clock()
        self._cubic = throttling.CubicCalculator(starting_max_rate=0, start_time=self._clock.current_time())
        self._bucket = bucket.TokenBucket(max_rate=1, clock=self._clock)
        self._enabled = False
        self._last_cut = -float("inf")
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def before_send(self) -> None:
        """Wait for a token while throttled (nothing to wait for until the first throttle)."""
        if self._enabled:
            self._bucket.acquire()
        now = time.monotonic()
        with self._lock:
            self._sent.append(now)
            while self._sent and self._sent[0] < now - 1.0:
                self._sent.popleft()

    def answered(self, *, throttled: bool) -> None:
        now = time.monotonic()
        timestamp = self._clock.current_time()
        with self._lock:
            if not throttled:
                if self._enabled:
                    self._bucket.max_rate = self._cubic.success_received(timestamp)
                return
            if now - self._last_cut < self.cooldown:
                return
            self._last_cut = now
            # The rate actually sent: requests of the last second over the time they span (a
            # process that started a moment ago has sent few, but fast).
            span = min(1.0, max(0.05, now - self._sent[0])) if self._sent else 1.0
            sent = max(1.0, len(self._sent) / span)
            rate = min(sent, self._bucket.max_rate) if self._enabled else sent
            self._bucket.max_rate = self._cubic.error_received(rate, timestamp)
            self._enabled = True

    @property
    def rate(self) -> float | None:
        """Requests per second now allowed; None while no throttle has been seen."""
        return float(self._bucket.max_rate) if self._enabled else None
