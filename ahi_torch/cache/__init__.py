"""A pickle-free disk cache of frames and metadata, shared by all DataLoader workers on a node."""

from .frame_cache import CacheCounters, FrameCache, FrameKey, default_directory, frame_key, metadata_key
from .records import CorruptEntry

__all__ = [
    "CacheCounters",
    "CorruptEntry",
    "FrameCache",
    "FrameKey",
    "default_directory",
    "frame_key",
    "metadata_key",
]
