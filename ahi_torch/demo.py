"""Deprecated: moved to :mod:`ahi_torch.sample.demo`; this alias stays for one release."""

from __future__ import annotations

import warnings

from .sample.demo import *  # noqa: F403

warnings.warn(
    "ahi_torch.demo is deprecated: import from ahi_torch.sample.demo",
    DeprecationWarning,
    stacklevel=2,
)
