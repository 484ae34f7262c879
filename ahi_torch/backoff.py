"""The one backoff rule: exponential pauses with "equal jitter", for every retry ahi_torch makes.

The client's retries of cut-short bodies, the fetch layer's retries of frames and the error
policy's retries of items all wait ``base * 2**(attempt - 1)`` seconds, at most ``cap``, drawn
from the upper half of that step, so workers that failed together do not come back together.

>>> pause(1, base=0.05, cap=2.0)        # somewhere in [0.025, 0.05]
>>> pause(10, base=0.05, cap=2.0)       # somewhere in [1.0, 2.0]
"""

from __future__ import annotations

import random


def step(attempt: int, base: float, cap: float) -> float:
    """The un-jittered pause after failed attempt number ``attempt`` (1 for the first)."""
    return min(cap, base * 2 ** (attempt - 1))


def pause(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait after failed attempt ``attempt``: uniform over the upper half of its step."""
    full = step(attempt, base, cap)
    return random.uniform(full / 2, full)
