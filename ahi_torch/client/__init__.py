"""The AHI client: configuration, the fork-safe :class:`AHIClient`, and a shared rate limiter.

>>> from ahi_torch.client import AHIClient
>>> client = AHIClient(region="us-east-1")
>>> client.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"]
'ACTIVE'
"""

from .config import ClientConfig
from .core import AHIClient, dicom_updates
from .frame_transport import FrameTransport, ImageFrame
from .ratelimit import RateLimiter

__all__ = ["AHIClient", "ClientConfig", "FrameTransport", "ImageFrame", "RateLimiter", "dicom_updates"]
