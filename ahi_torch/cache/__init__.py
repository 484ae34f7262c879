"""A pickle-free disk cache of frames and metadata, shared by all DataLoader workers on a node."""

from .entry_format import CorruptEntry
from .frame_cache import FrameCache, FrameKey, default_directory, frame_key

__all__ = [
    "CorruptEntry",
    "FrameCache",
    "FrameKey",
    "default_directory",
    "frame_key",
]
