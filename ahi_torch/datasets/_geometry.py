"""The affine and spacing of a dataset item, in the convention of :mod:`ahi_torch.metadata.geometry`.

An affine indexes the item tensor's own spatial axes in order: ``(slice, row, column)`` for a
volume ``(C, D, H, W)``, ``(row, column)`` for a frame ``(C, H, W)`` (whose 4x4 affine has the
slice normal, scaled by the slice spacing, as its third column). ``spacing`` holds the lengths of
the affine's spatial columns.

``reduce=k`` decodes every 2**k-th sample in each in-plane direction. JPEG 2000's low-pass band
keeps the samples at even positions, so the first voxel's centre stays where it was and the
in-plane steps grow by 2**k.
"""

from __future__ import annotations

import numpy as np

from ..metadata.geometry import plane_affine, slice_normal
from ._table import FrameTable


def _finite(value: float, default: float = 1.0) -> float:
    return float(value) if np.isfinite(value) and value > 0 else default


def _reduced(affine: np.ndarray, in_plane_columns: tuple[int, int], reduce: int) -> np.ndarray:
    if reduce:
        affine = affine.copy()
        affine[:3, list(in_plane_columns)] *= 2**reduce
    return affine


def spacing_of(affine: np.ndarray, axes: int) -> np.ndarray:
    """Voxel spacing along the first ``axes`` tensor axes: the lengths of the affine's columns."""
    return np.linalg.norm(affine[:3, :axes], axis=0)


def volume_affine(table: FrameTable, first: int, reduce: int = 0) -> np.ndarray:
    """Voxel ``(slice, row, column, 1)`` to LPS mm for the volume whose first frame is row ``first``."""
    affine = np.asarray(table.series_affine[first], dtype=np.float64).reshape(4, 4).copy()
    # The series affine starts at the series' first slice; a volume may start further in (an index
    # filtered to a contiguous run of slices).
    affine[:3, 3] += affine[:3, 0] * int(table.slice_index[first])
    if not np.isfinite(affine).all():
        steps = [_finite(table.slice_spacing[first]), _finite(table.pixel_spacing_row[first])]
        affine = np.diag([*steps, _finite(table.pixel_spacing_col[first]), 1.0])
    return _reduced(affine, (1, 2), reduce)


def frame_affine(table: FrameTable, row: int, reduce: int = 0) -> np.ndarray:
    """Pixel ``(row, column, 0, 1)`` to LPS mm for one frame; the third column steps along the normal."""
    in_plane = (_finite(table.pixel_spacing_row[row]), _finite(table.pixel_spacing_col[row]))
    thickness = _finite(table.slice_spacing[row])
    orientation = np.asarray(table.image_orientation[row], dtype=np.float64)
    position = np.asarray(table.image_position[row], dtype=np.float64)
    if np.isfinite(orientation).all() and np.isfinite(position).all():
        slice_first = plane_affine(orientation, in_plane, position, slice_normal(orientation) * thickness)
        affine = slice_first[:, [1, 2, 0, 3]]
    else:
        affine = np.diag([in_plane[0], in_plane[1], thickness, 1.0])
    return _reduced(affine, (0, 1), reduce)
