"""Deprecated: the frame path moved to :mod:`ahi_torch.fetch`; these names stay for one release."""

from __future__ import annotations

import warnings

from .fetch import FetchCounters, FrameFetcher, FrameRef

warnings.warn(
    "ahi_torch.pixels is deprecated: import FrameFetcher, FrameRef and FetchCounters from ahi_torch.fetch",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["FetchCounters", "FrameFetcher", "FrameRef"]
