"""How a frame is obtained: cache, GetImageFrame, decode, CRC32 check, one bounded retry layer.

>>> from ahi_torch.fetch import FrameFetcher, RetryPolicy
>>> fetcher = FrameFetcher(client, cache=FrameCache(), retry=RetryPolicy(max_attempts=4))
>>> pixels = fetcher.get(ref)
"""

from .fetcher import FrameFetcher
from .ref import FrameRef
from .retry import TRANSIENT, RetryPolicy, attempts_of

__all__ = ["TRANSIENT", "FrameFetcher", "FrameRef", "RetryPolicy", "attempts_of"]
