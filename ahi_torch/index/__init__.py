"""The frame index: SearchImageSets + metadata → one Arrow row per frame, saved as Parquet.

>>> from ahi_torch.index import FrameIndex, build_index, search
>>> index = build_index(client, datastore_id, filters=[search.is_primary()], extra_tags=["KVP"])
>>> index.save("ct.parquet"); FrameIndex.load("ct.parquet").version == index.version
True
"""

from . import search
from .build import RefreshStats, build_index, refresh_index, search_image_sets
from .columns import COLUMNS
from .frame_index import FrameIndex, Volume
from .search import Search

__all__ = [
    "COLUMNS",
    "FrameIndex",
    "RefreshStats",
    "Search",
    "Volume",
    "build_index",
    "refresh_index",
    "search",
    "search_image_sets",
]
