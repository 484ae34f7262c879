"""poll_until: the one polling helper every wait in ahi_torch uses."""

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
