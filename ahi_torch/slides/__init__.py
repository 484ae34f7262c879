"""Whole-slide images (DICOM VL Whole Slide Microscopy) in AHI, read with OpenSlide's API.

>>> from ahi_torch.slides import open_slide
>>> slide = open_slide(client, datastore_id, image_set_id)
>>> patch = slide.read_region((2048, 1024), 0, (256, 256))    # (256, 256, 3) uint8
"""

from .pyramid import WSI_STORAGE, SlideImage, SlidePyramid, describe_slide
from .slide import Slide, open_slide

__all__ = ["WSI_STORAGE", "Slide", "SlideImage", "SlidePyramid", "describe_slide", "open_slide"]
