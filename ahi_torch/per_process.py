"""PerProcess: a handle made on first use in each process, made again after fork, never pickled.

DataLoader workers receive datasets by fork or by pickle; connection pools, thread pools and
store clients must not cross either way. Every such handle in ahi_torch is one of these.

>>> class Client:
...     def __init__(self) -> None:
...         self._session = PerProcess(make_session)
...     def session(self) -> Session:
...         return self._session.get()          # new after fork; PerProcess pickles empty
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """``factory()`` called at most once per process, lazily and thread-safely."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self.factory = factory
        self._value: T | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        """This process's value, made now if this process has none yet."""
        pid = os.getpid()
        value = self._value
        if value is None or self._pid != pid:
            with self._lock:
                if self._value is None or self._pid != pid:
                    self._value = self.factory()
                    self._pid = pid
                value = self._value
        assert value is not None
        return value

    def current(self) -> T | None:
        """The value if this process made one, else None (nothing is made)."""
        return self._value if self._pid == os.getpid() else None

    def reset(self) -> None:
        """Forget this process's value; the next :meth:`get` makes a new one."""
        with self._lock:
            self._value, self._pid = None, None

    def __getstate__(self) -> dict[str, Any]:
        return {"factory": self.factory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["factory"])  # type: ignore[misc]
