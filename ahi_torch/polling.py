"""One way to wait for something: poll with backoff until a deadline.

>>> ready = poll_until(lambda: path.exists(), timeout=60, what="local serve to write its endpoints")

Every wait in ahi_torch goes through :func:`poll_until` (the client's ``wait_for_*`` waiters, the
local service starting, data stores becoming ACTIVE, import jobs ending), so every one of them
has a timeout and says what it waited for when it gives up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class PollTimeout(TimeoutError):
    """What was waited for did not happen before the deadline."""


def poll_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    max_interval: float = 2.0,
    backoff: float = 1.5,
) -> T:
    """Call ``check`` until it returns something truthy, and return that.

    Pauses start at ``interval`` and grow by ``backoff`` up to ``max_interval``. ``check`` may
    raise to stop early (a process that died, a terminal failure state). After ``timeout``
    seconds, :class:`PollTimeout` names ``what`` was awaited.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        result = check()
        if result:  # None, False, 0 and empty mean "not yet"
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PollTimeout(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(min(delay, remaining))
        delay = min(delay * backoff, max_interval)
