"""A request budget shared by every process of a multi-node job, kept in torch.distributed's TCPStore.

:class:`~ahi_torch.client.ratelimit.RateLimiter` shares a budget between the processes of one
machine (a file lock). Across machines the job needs one place every process can count in; every
``torchrun`` job already runs one: the TCPStore at ``MASTER_ADDR:MASTER_PORT``, whose ``add`` is
atomic across nodes. No new server is needed.

The budget is a fixed-window counter: time is cut into windows of one second (longer for rates
under 1/s); a request takes the next number of its operation's window with ``store.add``, and
when the window's quota is spent it waits for the next window. So no second ever holds more
than the quota of its window, and no span of one second more than twice the quota, which is
AHI's burst allowance (GetImageFrame: 1000/s, bursts to 2000). Windows follow each machine's
wall clock: keep the nodes' clocks synchronised (NTP), as AWS's SigV4 already requires.

>>> budget = StoreBudget({"GetImageFrame": 1000.0})          # MASTER_ADDR:MASTER_PORT under torchrun
>>> budget.acquire("GetImageFrame")                          # returns at once while the window lasts
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..per_process import PerProcess


def store_address(address: str | None = None) -> tuple[str, int]:
    """``host:port`` (or ``env``/None: ``MASTER_ADDR:MASTER_PORT``, as torchrun sets them)."""
    if address in (None, "", "env"):
        host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if not host or not port:
            raise ConfigError("a shared request budget needs MASTER_ADDR and MASTER_PORT (run under torchrun)")
        address = f"{host}:{port}"
    assert address is not None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"rate_limit_store must be host:port or 'env', not {address!r}")
    return host, int(port)


class StoreBudget:
    """Per-operation request budgets counted in a TCPStore; picklable, connects lazily per process.

    Args:
        rates: requests per second per operation for the whole job (the account's quota).
        address: the TCPStore's ``host:port``; ``None``/``"env"`` reads MASTER_ADDR/MASTER_PORT.
        window: seconds per counting window (at least one request's worth of time).
        prefix: key prefix in the store, so several budgets (or jobs) can share one store.
    """

    def __init__(
        self,
        rates: Mapping[str, float],
        address: str | None = None,
        *,
        window: float = 1.0,
        prefix: str = "ahi_torch/budget",
    ) -> None:
        if window <= 0:
            raise ConfigError(f"window must be positive, not {window}")
        self.rates = dict(rates)
        self.host, self.port = store_address(address)
        self.window = window
        self.prefix = prefix
        self.waited_seconds = 0.0
        self._store = PerProcess(self._connect)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._store = PerProcess(self._connect)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"StoreBudget({self.host}:{self.port}, {self.rates})"

    def _connect(self) -> Any:
        from torch.distributed import TCPStore

        return TCPStore(self.host, self.port, is_master=False, timeout=dt.timedelta(seconds=60), wait_for_workers=False)

    def store(self) -> Any:
        """This process's TCPStore client (made on first use, again after fork)."""
        return self._store.get()

    def acquire(self, operation: str) -> float:
        """Take one request of ``operation`` from the shared budget, waiting if it is spent; returns the wait."""
        rate = self.rates.get(operation)
        if not rate:
            return 0.0
        window = max(self.window, 1.0 / rate)
        capacity = max(1, round(rate * window))
        waited = 0.0
        while True:
            now = time.time()
            slot = int(now // window)
            with self._lock:
                taken = int(self.store().add(f"{self.prefix}/{operation}/{slot}", 1))
            if taken <= capacity:
                self.waited_seconds += waited
                return waited
            pause = (slot + 1) * window - now
            time.sleep(pause)
            waited += pause
