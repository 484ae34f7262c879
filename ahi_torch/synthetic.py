"""Deprecated: moved to :mod:`ahi_torch.sample.synthetic`; this alias stays for one release."""

from __future__ import annotations

import warnings

from .sample.synthetic import *  # noqa: F403

warnings.warn(
    "ahi_torch.synthetic is deprecated: import from ahi_torch.sample.synthetic",
    DeprecationWarning,
    stacklevel=2,
)
