"""Where the tissue is: Otsu's threshold on the saturation of a slide's thumbnail.

Glass and background are bright and grey (low saturation); stained tissue is coloured. Pathology
pipelines (CLAM, MONAI's pathology apps, HistomicsTK) threshold the HSV saturation of a
low-resolution image with Otsu's method, and so does this:

>>> mask = tissue_mask(slide.get_thumbnail((1024, 1024)))     # (h, w) bool, True on tissue
>>> tissue_fractions(mask, slide.dimensions, boxes)             # share of tissue under each box

Otsu's method is written out here (a histogram and a cumulative sum) rather than taken from
scikit-image, which would add a dependency of tens of megabytes for one threshold.
"""

from __future__ import annotations

import numpy as np


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of (h, w, 3) uint8 pixels, in [0, 1]: (max - min) / max, 0 on black."""
    pixels = rgb.astype(np.float32)
    high, low = pixels.max(axis=-1), pixels.min(axis=-1)
    return np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold in [0, 1] that maximises the between-class variance of ``values`` (Otsu, 1979).

    Values above it form one class. Constant input has no threshold between classes: it returns
    that value, so nothing lies above it.
    """
    counts, edges = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)[:-1]  # pixels at or below each candidate threshold
    above = counts.sum() - below
    if not ((below > 0) & (above > 0)).any():  # every value in one bin: one class
        return float(np.clip(values, 0.0, 1.0).max(initial=0.0))
    weighted = np.cumsum(counts * centres)[:-1]
    total = float((counts * centres).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_below = weighted / below
        mean_above = (total - weighted) / above
        between = below * above * (mean_below - mean_above) ** 2
    between = np.where((below > 0) & (above > 0), between, -1.0)
    return float(edges[1:-1][int(np.argmax(between))])


def tissue_mask(thumbnail: np.ndarray) -> np.ndarray:
    """True where the thumbnail's saturation lies above its Otsu threshold."""
    values = saturation(thumbnail)
    return np.asarray(values > otsu_threshold(values))


def tissue_fractions(mask: np.ndarray, dimensions: tuple[int, int], boxes: np.ndarray) -> np.ndarray:
    """The share of ``mask`` that is tissue under each box ``(x, y, width, height)`` in level-0 pixels.

    ``dimensions`` is the slide's level-0 (width, height), which the mask covers; a box reaching
    past the slide counts what lies outside as background. One summed-area table, O(1) a box.
    """
    height, width = mask.shape
    scale_x, scale_y = width / dimensions[0], height / dimensions[1]
    table = np.zeros((height + 1, width + 1), dtype=np.int64)
    table[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0 = np.floor(boxes[:, 0] * scale_x).astype(np.int64)
    y0 = np.floor(boxes[:, 1] * scale_y).astype(np.int64)
    x1 = np.maximum(np.ceil((boxes[:, 0] + boxes[:, 2]) * scale_x).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.ceil((boxes[:, 1] + boxes[:, 3]) * scale_y).astype(np.int64), y0 + 1)
    area = (x1 - x0) * (y1 - y0)
    cx0, cx1 = np.clip(x0, 0, width), np.clip(x1, 0, width)
    cy0, cy1 = np.clip(y0, 0, height), np.clip(y1, 0, height)
    inside = table[cy1, cx1] - table[cy0, cx1] - table[cy1, cx0] + table[cy0, cx0]
    return np.asarray(inside / area, dtype=np.float64)
