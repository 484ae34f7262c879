"""poll_until and PerProcess: the one polling helper and the one lazy per-process handle."""

from __future__ import annotations

import itertools

import pytest

from ahi_torch.polling import PollTimeout, poll_until


def test_returns_the_first_truthy_result() -> None:
    answers = iter([None, 0, {}, {"jobStatus": "COMPLETED"}])
    assert poll_until(lambda: next(answers), timeout=5, what="a job", interval=0.001) == {"jobStatus": "COMPLETED"}


def test_gives_up_naming_what_it_waited_for() -> None:
    calls = itertools.count()
    with pytest.raises(PollTimeout, match="waiting for data store d to become ACTIVE") as info:
        poll_until(lambda: next(calls) < 0, timeout=0.05, what="data store d to become ACTIVE", interval=0.01)
    assert isinstance(info.value, TimeoutError) and next(calls) >= 3, "it kept polling until the deadline"


def test_a_check_can_stop_early() -> None:
    def dead() -> bool:
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="exited"):
        poll_until(dead, timeout=5, what="a process")


def test_per_process_handles_are_made_once_and_never_pickled() -> None:
    import os
    import pickle

    from ahi_torch.per_process import PerProcess

    made = _MADE
    made.clear()
    handle = PerProcess(_factory)
    assert handle.current() is None
    first = handle.get()
    assert handle.get() is first and made == [os.getpid()], "once per process"
    clone = pickle.loads(pickle.dumps(handle))
    assert clone.current() is None and clone.get() is not first, "a pickled handle starts empty"
    handle._pid = -1  # as after fork: another process's value
    assert handle.current() is None and handle.get() is not first


_MADE: list[int] = []


def _factory() -> object:
    import os

    _MADE.append(os.getpid())
    return object()
