"""The AHI client: configuration, the fork-safe :class:`AHIClient`, and a shared rate limiter.

>>> from ahi_torch.client import AHIClient
>>> client = AHIClient(region="us-east-1")
>>> client.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"]
'ACTIVE'
"""

from .config import ClientConfig
from .core import AHIClient, ImageFrame, dicom_updates
from .ratelimit import RateLimiter

__all__ = ["AHIClient", "ClientConfig", "ImageFrame", "RateLimiter", "dicom_updates"]
