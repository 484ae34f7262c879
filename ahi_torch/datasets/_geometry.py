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

from ._table import FrameTable


def _finite(value: float, default: float = 1.0) -> float:
    return float(value) if np.isfinite(value) and value > 0 else default


def _reduced(affine: np.ndarray, in_plane_columns: tuple[int, int], reduce: int) -> np.ndarray:
    if reduce:
        affine = affine.copy()
        affine[:3, list(in_plane_columns)] *= 2**reduce
    return affine


def spacing_of(affine: np.ndarray, axes: int) -> np.ndarray:
    """Voxel spacing along the first ``axes`` tensor axes: the lengths of the affine's columns.

    ``affine`` is one 4x4 matrix or a stack of them (..., 4, 4), as :func:`frame_affines` gives.
    """
    return np.linalg.norm(affine[..., :3, :axes], axis=-2)


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


def frame_affines(table: FrameTable, rows: np.ndarray, reduce: int = 0) -> np.ndarray:
    """Pixel ``(row, column, 0, 1)`` to LPS mm for each row's frame, ``(len(rows), 4, 4)``.

    :func:`~ahi_torch.metadata.geometry.plane_affine`'s columns reordered for a 2D item: down a row
    (the column direction cosine by PixelSpacing[0]), along a row (the row cosine by
    PixelSpacing[1]), along the slice normal by the slice spacing. Frames without an orientation
    and position get a diagonal of their spacings.
    """
    rows = np.asarray(rows, dtype=np.int64)
    count = len(rows)
    steps = np.stack(
        [_finite_steps(table.pixel_spacing_row[rows]), _finite_steps(table.pixel_spacing_col[rows])], axis=1
    )
    thickness = _finite_steps(table.slice_spacing[rows])
    orientation = np.asarray(table.image_orientation[rows], dtype=np.float64).reshape(count, 6)
    position = np.asarray(table.image_position[rows], dtype=np.float64).reshape(count, 3)
    affines = np.zeros((count, 4, 4))
    affines[:, 3, 3] = 1.0
    placed = np.isfinite(orientation).all(axis=1) & np.isfinite(position).all(axis=1)
    unplaced = ~placed
    affines[unplaced, 0, 0], affines[unplaced, 1, 1] = steps[unplaced, 0], steps[unplaced, 1]
    affines[unplaced, 2, 2] = thickness[unplaced]
    along_row, along_column = orientation[placed, :3], orientation[placed, 3:]
    # np.cross, written out: its axis handling costs more than the products for a few rows.
    normal = along_row[:, _NEXT] * along_column[:, _AFTER] - along_row[:, _AFTER] * along_column[:, _NEXT]
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    affines[placed, :3, 0] = along_column * steps[placed, :1]
    affines[placed, :3, 1] = along_row * steps[placed, 1:]
    affines[placed, :3, 2] = normal * thickness[placed, None]
    affines[placed, :3, 3] = position[placed]
    affines[:, :3, :2] *= 2**reduce
    return affines


_NEXT, _AFTER = [1, 2, 0], [2, 0, 1]


def _finite_steps(values: np.ndarray) -> np.ndarray:
    """``values`` with non-finite or non-positive entries replaced by 1 mm (see :func:`_finite`)."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(values) & (values > 0), values, 1.0)
