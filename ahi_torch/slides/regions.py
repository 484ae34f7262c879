"""Regions of a pyramid level assembled from tiles: which tiles a region covers, and pasting their pixels.

Shared by :class:`~ahi_torch.slides.Slide` (tiles by frame) and
:class:`~ahi_torch.datasets.PatchDataset` (tiles by index row), so both place a tile the same way.
Coordinates are the level's pixels; a tile at grid (row, column) starts at
``(column * tile_width, row * tile_height)``; edge tiles are stored padded, so only the part inside
the level's size is pasted.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional

from ..codecs.color import to_rgb
from ..errors import MetadataError


def level_corner(location: tuple[int, int], downsample: float) -> tuple[int, int]:
    """A level-0 ``location`` (x, y) in the pixels of a level ``downsample`` times coarser (rounded down)."""
    return math.floor(location[0] / downsample), math.floor(location[1] / downsample)


def covering(
    grid: np.ndarray,
    tile_size: tuple[int, int],
    level_size: tuple[int, int],
    corner: tuple[int, int],
    size: tuple[int, int],
) -> list[tuple[int, int, int]]:
    """``(x, y, grid value)`` of each stored tile (value ≥ 0) under the region ``corner`` + ``size``."""
    (tile_width, tile_height), (level_width, level_height) = tile_size, level_size
    left, top = corner
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + size[0], level_width), min(top + size[1], level_height)
    if x0 >= x1 or y0 >= y1:
        return []
    return [
        (column * tile_width, row * tile_height, int(grid[row, column]))
        for row in range(y0 // tile_height, (y1 - 1) // tile_height + 1)
        for column in range(x0 // tile_width, (x1 - 1) // tile_width + 1)
        if grid[row, column] >= 0
    ]


def paste(
    region: np.ndarray, corner: tuple[int, int], tile: np.ndarray, at: tuple[int, int], level_size: tuple[int, int]
) -> None:
    """Copy the part of ``tile`` (placed at ``at``) inside both the level and ``region`` (placed at ``corner``)."""
    (left, top), (x, y) = corner, at
    height, width = region.shape[:2]
    x0, y0 = max(x, left, 0), max(y, top, 0)
    x1 = min(x + tile.shape[1], left + width, level_size[0])
    y1 = min(y + tile.shape[0], top + height, level_size[1])
    if x0 < x1 and y0 < y1:
        region[y0 - top : y1 - top, x0 - left : x1 - left] = tile[y0 - y : y1 - y, x0 - x : x1 - x]


def tile_rgb(pixels: np.ndarray, tile_size: tuple[int, int], photometric: str, syntax: str, where: str) -> np.ndarray:
    """A decoded tile as (height, width, 3) uint8 RGB; monochrome tiles grey in all three channels."""
    if pixels.dtype != np.uint8 or pixels.shape[:2] != (tile_size[1], tile_size[0]):
        raise MetadataError(
            f"a tile of {where} decoded to {pixels.dtype} {pixels.shape}, not 8-bit {tile_size[1]} x {tile_size[0]}"
        )
    if pixels.ndim == 2:  # monochrome (fluorescence channels)
        return np.repeat(pixels[..., None], 3, axis=-1)
    return to_rgb(pixels, photometric, syntax)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(height, width, 3) uint8 resized to ``size`` (width, height), antialiased as Pillow's thumbnails are."""
    if (image.shape[1], image.shape[0]) == size:
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    resized = functional.interpolate(tensor, size=(size[1], size[0]), mode="bilinear", antialias=True)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
