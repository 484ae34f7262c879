"""Endpoint silence and adaptive throttling (client/health.py), and the retry policy's pauses (fetch/retry.py)."""

from __future__ import annotations

import logging
import time

import pytest

from ahi_torch.client.health import AdaptiveRate, Silence
from ahi_torch.errors import EndpointDown
from ahi_torch.fetch import RetryPolicy


def test_silence_warns_once_per_silence_and_fails_past_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    silence = Silence("http://127.0.0.1:9", limit=0.2)
    with caplog.at_level(logging.WARNING, logger="ahi_torch.client.health"):
        silence.sent()
        silence.timed_out(TimeoutError("read timed out"))
        silence.timed_out(TimeoutError("read timed out"))
        assert len(caplog.records) == 1, "one warning per silence, not one per timeout"
        silence.answered()
        assert silence.silent_for() == 0.0
        silence.sent()
        silence.timed_out(TimeoutError("read timed out"))
        assert len(caplog.records) == 2, "an answer ends the silence; the next one warns again"
    time.sleep(0.25)
    with pytest.raises(
        EndpointDown, match=r"http://127\.0\.0\.1:9 has not answered for 0 s \(endpoint_timeout=0\.2 s\)"
    ):
        silence.timed_out(TimeoutError("read timed out"))


def test_adaptive_rate_paces_only_after_a_throttle_and_cuts_once_per_round() -> None:
    rate = AdaptiveRate(cooldown=10.0)
    for _ in range(20):
        rate.before_send()
        rate.answered(throttled=False)
    assert rate.rate is None, "nothing is paced before the first throttle"
    rate.answered(throttled=True)
    first = rate.rate
    assert first is not None and first > 0
    rate.answered(throttled=True)
    assert rate.rate == first, "throttles within the cooldown are one event"


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 10])
def test_retry_pauses_grow_doubling_with_jitter_up_to_the_cap(attempt: int) -> None:
    policy = RetryPolicy(base_delay=0.05, max_delay=2.0)
    step = min(2.0, 0.05 * 2 ** (attempt - 1))
    pauses = [policy.delay(attempt) for _ in range(200)]
    assert all(step / 2 <= p <= step for p in pauses), (attempt, min(pauses), max(pauses))
    assert max(pauses) - min(pauses) > step / 10, "jittered, so throttled workers do not come back together"


def test_retry_policy_classifies_failures() -> None:
    from ahi_torch.errors import ChecksumMismatch, EndpointUnreachable, NoCredentials, Throttled

    policy = RetryPolicy()
    assert policy.is_transient(Throttled("ThrottlingException", "slow down")) and policy.is_throttle(
        Throttled("ThrottlingException", "slow down")
    )
    assert policy.is_transient(ChecksumMismatch("frame", 1, 2)) and not policy.is_throttle(ChecksumMismatch("f", 1, 2))
    assert policy.is_transient(EndpointUnreachable("reset"))
    assert not policy.is_transient(EndpointDown("down")) and not policy.is_transient(NoCredentials())
    with pytest.raises(Exception, match="max_throttled_seconds must be positive"):
        RetryPolicy(max_throttled_seconds=0)
