"""The one retry layer of the frame path: which failures are transient, how long to wait, when to stop.

Every attempt at a frame (request, transfer, decode, CRC check) either yields verified pixels
or fails. A transient failure is tried again after a jittered, exponentially growing pause;
after ``max_attempts`` attempts in all, the last error is raised with ``error.attempts`` set, so
the dataset's error policy knows this frame was already retried and does not multiply the
requests (``retry`` in :class:`~ahi_torch.datasets.policy.ErrorPolicy` retries only failures
this layer does not).

Nothing below this layer retries a frame: the transport makes one request per call
(:mod:`ahi_torch.client.frame_transport`). One bad frame therefore costs at most
``max_attempts`` GetImageFrame requests, however it fails.

>>> policy = RetryPolicy(max_attempts=4)
>>> policy.is_transient(Throttled("ThrottlingException", "Rate exceeded"))
True
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backoff import pause
from ..errors import (
    AccessDenied,
    ChecksumMismatch,
    ConfigError,
    DecodeError,
    EndpointDown,
    EndpointUnreachable,
    InternalServerError,
    NoCredentials,
    Throttled,
)

#: Failures worth another request: throttling, 5xx, a dropped or cut-short transfer, and pixels
#: that do not match AHI's checksum or do not decode (both what a corrupted transfer looks like).
TRANSIENT: tuple[type[Exception], ...] = (
    Throttled,
    InternalServerError,
    EndpointUnreachable,
    ChecksumMismatch,
    DecodeError,
)
#: Failures of the endpoint or the account, not of a frame: never retried, never replaced by
#: another sample (every other sample would fail the same way).
ENDPOINT_FAILURES: tuple[type[Exception], ...] = (EndpointDown, NoCredentials, AccessDenied)


@dataclass(frozen=True)
class RetryPolicy:
    """How a frame is retried.

    Args:
        max_attempts: GetImageFrame requests per frame at most, the first one included.
        base_delay: seconds before the second attempt; doubled for each further one.
        max_delay: the longest pause between two attempts.

        max_throttled_seconds: how long one frame may keep being throttled before its last
            throttle is raised. Throttles do not count as attempts: the transport lowers its send
            rate on each (botocore's adaptive mode), so a throttled frame waits for the rate the
            service grants instead of failing after ``max_attempts``.

    Pauses are drawn uniformly from the upper half of the current step ("equal jitter"), so
    workers that were throttled together do not come back together.
    """

    max_attempts: int = 4
    base_delay: float = 0.05
    max_delay: float = 2.0
    max_throttled_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ConfigError("base_delay must be >= 0 and max_delay >= base_delay")
        if self.max_throttled_seconds <= 0:
            raise ConfigError(f"max_throttled_seconds must be positive, not {self.max_throttled_seconds}")

    @staticmethod
    def is_transient(error: BaseException) -> bool:
        return isinstance(error, TRANSIENT) and not isinstance(error, ENDPOINT_FAILURES)

    @staticmethod
    def is_throttle(error: BaseException) -> bool:
        """A throttle asks for a slower rate; it does not use up one of the frame's attempts."""
        return isinstance(error, Throttled)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first); see :mod:`ahi_torch.backoff`."""
        return pause(attempt, self.base_delay, self.max_delay)


def attempts_of(error: BaseException) -> int:
    """How many attempts the retry layer made before raising ``error`` (0: not from that layer)."""
    return int(getattr(error, "attempts", 0))
