"""A request budget shared by every process on a machine: one token bucket per operation in a file.

DataLoader workers are separate processes, and botocore's adaptive retry mode keeps its token
bucket per client, so eight workers each "respecting" 1000 requests/s send 8000. Here each
operation's bucket lives in a 16-byte file (tokens, timestamp) updated under an exclusive
``flock``; a caller that finds the bucket empty takes a token on credit and sleeps until it is
due, which keeps the combined rate at the limit without busy waiting.

>>> limiter = RateLimiter({"GetImageFrame": 1000.0})
>>> limiter.acquire("GetImageFrame")      # returns at once while the burst lasts
"""

from __future__ import annotations

import fcntl
import os
import struct
import tempfile
import threading
import time
from pathlib import Path

from ..per_process import PerProcess

_STATE = struct.Struct("<dd")


def default_directory() -> Path:
    """Per-user directory for bucket files (``$TMPDIR/ahi-torch-ratelimit-<uid>``)."""
    return Path(tempfile.gettempdir()) / f"ahi-torch-ratelimit-{os.getuid()}"


class RateLimiter:
    """Token buckets (``rate`` per second, ``burst`` = one second's worth) shared through files."""

    def __init__(
        self, rates: dict[str, float], directory: str | Path | None = None, burst_seconds: float = 1.0
    ) -> None:
        self.rates = dict(rates)
        self.directory = Path(directory) if directory else default_directory()
        self.burst_seconds = burst_seconds
        # Each process opens its own descriptors: a forked worker sharing its parent's open file
        # would share its flock too, and the lock would exclude nobody.
        self._fds: PerProcess[dict[str, int]] = PerProcess(dict)
        self._lock: PerProcess[threading.Lock] = PerProcess(threading.Lock)
        self.waited_seconds = 0.0

    def _fd(self, operation: str) -> int:
        fds = self._fds.get()
        fd = fds.get(operation)
        if fd is None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.directory / f"{operation}.bucket", os.O_RDWR | os.O_CREAT, 0o600)
            fds[operation] = fd
        return fd

    def acquire(self, operation: str) -> float:
        """Take one token for ``operation``, sleeping if the shared budget is spent; returns the wait."""
        rate = self.rates.get(operation)
        if not rate:
            return 0.0
        burst = max(1.0, rate * self.burst_seconds)
        with self._lock.get():
            fd = self._fd(operation)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                # Wall time, because the bucket file outlives the processes (and boots) that wrote it.
                now = time.time()
                raw = os.pread(fd, _STATE.size, 0)
                tokens, last = _STATE.unpack(raw) if len(raw) == _STATE.size else (burst, now)
                tokens = min(burst, tokens + max(0.0, now - last) * rate) - 1.0
                os.pwrite(fd, _STATE.pack(tokens, now), 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        wait = -tokens / rate if tokens < 0 else 0.0
        if wait > 0:
            self.waited_seconds += wait
            time.sleep(wait)
        return wait
