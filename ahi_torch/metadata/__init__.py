"""Typed views of AHI image set metadata documents: image set → series → instances → frames."""

from .pixel import PixelDescription

__all__ = ["PixelDescription"]
