"""ErrorPolicy: what a dataset does with an item that fails (datasets/policy.py)."""

from __future__ import annotations

import pytest

from ahi_torch.datasets import ErrorPolicy
from ahi_torch.datasets import policy as policy_module
from ahi_torch.errors import ConfigError


def test_retries_back_off_doubling(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(policy_module.time, "sleep", slept.append)
    policy = ErrorPolicy("retry", retries=3, backoff=0.25)
    for attempt in range(3):
        policy_module.sleep_before_retry(policy, attempt)
    for pause, step in zip(slept, (0.25, 0.5, 1.0), strict=True):
        assert step / 2 <= pause <= step, "doubling from backoff, jittered over the upper half"


def test_policy_settings_are_checked() -> None:
    assert ErrorPolicy("retry", retries=0).retries == 0, "no retry at all is allowed"
    with pytest.raises(ConfigError, match="retries must be >= 0"):
        ErrorPolicy("retry", retries=-1)
    with pytest.raises(ConfigError, match="max_replacements >= 1"):
        ErrorPolicy("skip", max_replacements=0)
    assert ErrorPolicy.of("skip").mode == "skip"


def test_replacements_are_distinct_deterministic_and_never_the_item() -> None:
    first = policy_module.replacements(5, 20, 15)
    assert first == policy_module.replacements(5, 20, 15) and 5 not in first
    assert len(set(first)) == len(first) == 15 and all(0 <= c < 20 for c in first)
    assert sorted(policy_module.replacements(0, 3, 15)) == [1, 2], "no more than there are others"
    assert policy_module.replacements(0, 1, 15) == []
