"""What a dataset does when a sample cannot be produced: raise, skip (replace), or retry.

Failures are never returned as ``None``: under ``skip`` the sample is replaced by another index
that works and the failure is recorded; under ``retry`` it is attempted again with backoff before
the error is raised. Transient failures of single frames (throttling, 5xx, cut transfers,
checksum mismatches) never get here before the fetch layer has retried them
(:mod:`ahi_torch.fetch.retry`), and ``retry`` does not retry those again: it is for what that
layer does not retry, such as a whole volume after a non-transient failure.
Replacements are drawn deterministically from a sequence seeded by the failed index
(:func:`replacements`), so a run of dead samples is spread over the dataset instead of piling
onto the first good sample after it.
Every failure is counted and, with ``failure_log``, appended as one JSON line to a file that
all DataLoader workers share.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backoff import pause
from ..errors import ConfigError

MODES = ("raise", "skip", "retry")


@dataclass(frozen=True)
class ErrorPolicy:
    """Args:
    mode: ``raise`` (default), ``skip`` or ``retry``.
    retries: attempts after the first under ``retry``.
    backoff: seconds before the first retry, doubled each time.
    max_replacements: under ``skip``, how many following samples to try before giving up.
    failure_log: JSONL file every worker appends its failures to.
    """

    mode: str = "raise"
    retries: int = 2
    backoff: float = 0.2
    max_replacements: int = 16
    failure_log: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"error policy must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.retries < 0 or self.max_replacements < 1:
            raise ConfigError("retries must be >= 0 and max_replacements >= 1")

    @classmethod
    def of(cls, value: ErrorPolicy | str) -> ErrorPolicy:
        return value if isinstance(value, ErrorPolicy) else cls(mode=value)


@dataclass
class FailureRecord:
    index: int
    replaced_by: int | None
    error: str
    kind: str
    where: str

    def as_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


@dataclass
class FailureLog:
    """Failures seen by this process, mirrored to ``path`` (append-only JSONL) when given."""

    path: str | None = None
    records: list[FailureRecord] = field(default_factory=list)

    def record(self, record: FailureRecord) -> None:
        self.records.append(record)
        if self.path:
            line = (record.as_json() + "\n").encode()
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)  # one write per line: O_APPEND keeps workers' lines whole
            finally:
                os.close(fd)

    def __len__(self) -> int:
        return len(self.records)

    @staticmethod
    def read(path: str | Path) -> list[dict[str, Any]]:
        """Every failure written to a shared log (by all workers)."""
        target = Path(path)
        if not target.exists():
            return []
        return [json.loads(line) for line in target.read_text().splitlines() if line.strip()]


def replacements(index: int, size: int, count: int) -> list[int]:
    """Up to ``count`` distinct candidates to replace sample ``index`` of ``size``: deterministic, never ``index``."""
    rng = np.random.default_rng([index, size])
    others = size - 1
    if others <= count:
        order = rng.permutation(others)
        return [int(c) + (c >= index) for c in order]
    chosen: list[int] = []
    seen: set[int] = set()
    while len(chosen) < count:
        candidate = int(rng.integers(0, others))
        if candidate not in seen:
            seen.add(candidate)
            chosen.append(candidate + (candidate >= index))
    return chosen


def sleep_before_retry(policy: ErrorPolicy, attempt: int) -> None:
    """Wait before retry ``attempt`` (0 for the first): ``backoff``, doubled each time, jittered."""
    time.sleep(pause(attempt + 1, base=policy.backoff, cap=max(policy.backoff, 60.0)))
