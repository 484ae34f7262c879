"""Typed views of AHI image set metadata documents: image set → series → instances → frames.

>>> from ahi_torch.metadata import ImageSetMetadata
>>> image_set = ImageSetMetadata.parse(document)
>>> series = image_set.series[0]
>>> geometry = series.geometry()           # slice order, spacing (D, H, W) and LPS affine
"""

from .document import FrameChecksum, FrameInfo, ImageSetMetadata, InstanceMetadata, SeriesMetadata
from .geometry import SeriesGeometry, series_geometry, slice_normal
from .pixel import PixelDescription

__all__ = [
    "FrameChecksum",
    "FrameInfo",
    "ImageSetMetadata",
    "InstanceMetadata",
    "PixelDescription",
    "SeriesGeometry",
    "SeriesMetadata",
    "series_geometry",
    "slice_normal",
]
