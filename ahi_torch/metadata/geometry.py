"""Slice order, voxel spacing and the voxel-to-patient affine of a series.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of
the ImageOrientationPatient row and column directions), the only order that is right for
oblique and shuffled series; when positions or orientation are missing or inconsistent, by
InstanceNumber; failing that, as given.

The affine maps voxel indices ``(column, row, slice, 1)`` to patient coordinates in millimetres
in DICOM's LPS frame, so a volume tensor ``(D, H, W)`` = ``(slice, row, column)`` pairs with it
the way ITK and MONAI's ``ITKReader`` pair arrays with LPS affines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class SliceLike(Protocol):
    """What geometry needs of an instance (InstanceMetadata provides it)."""

    @property
    def position(self) -> tuple[float, float, float] | None: ...
    @property
    def orientation(self) -> tuple[float, float, float, float, float, float] | None: ...
    @property
    def pixel_spacing(self) -> tuple[float, float] | None: ...
    @property
    def instance_number(self) -> int | None: ...
    @property
    def slice_thickness(self) -> float | None: ...


@dataclass(frozen=True)
class SeriesGeometry:
    """Where each slice goes and how voxels map to the patient.

    Attributes:
        order: indices into the series' instances, in stacking order.
        positions: each ordered slice's position along the normal (mm), or None.
        spacing: voxel size ``(slice, row, column)`` in mm, matching ``(D, H, W)``.
        affine: 4x4 voxel ``(column, row, slice, 1)`` to LPS millimetres, or None without geometry.
        sorted_by: ``"position"``, ``"instance_number"`` or ``"none"``.
    """

    order: tuple[int, ...]
    positions: tuple[float, ...] | None
    spacing: tuple[float, float, float]
    affine: np.ndarray | None
    sorted_by: str


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of the image plane from ImageOrientationPatient (row x column direction)."""
    row, column = np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:6], dtype=float)
    normal = np.cross(row, column)
    return normal / np.linalg.norm(normal)


def _consistent_orientation(slices: Sequence[SliceLike]) -> tuple[float, ...] | None:
    orientations = [s.orientation for s in slices]
    first = orientations[0]
    if first is None or any(o is None or not np.allclose(o, first, atol=1e-4) for o in orientations):
        return None
    return first


def series_geometry(slices: Sequence[SliceLike]) -> SeriesGeometry:
    """Compute :class:`SeriesGeometry` for the instances of one series (single-frame slices)."""
    count = len(slices)
    if count == 0:
        return SeriesGeometry((), None, (1.0, 1.0, 1.0), None, "none")
    orientation = _consistent_orientation(slices)
    positions = [s.position for s in slices]
    in_plane = slices[0].pixel_spacing or (1.0, 1.0)
    if orientation is not None and all(p is not None for p in positions):
        normal = slice_normal(orientation)
        distances = np.array([float(np.dot(normal, p)) for p in positions])  # type: ignore[arg-type]
        order = tuple(int(i) for i in np.argsort(distances, kind="stable"))
        ordered = distances[list(order)]
        steps = np.diff(ordered)
        slice_spacing = float(np.median(steps)) if len(steps) else float(slices[0].slice_thickness or 1.0)
        if slice_spacing <= 0:
            slice_spacing = float(slices[0].slice_thickness or 1.0)
        first = np.asarray(positions[order[0]], dtype=float)
        if count > 1:
            last = np.asarray(positions[order[-1]], dtype=float)
            # The mean step between first and last slice also captures gantry tilt.
            slice_vector = (last - first) / (count - 1)
        else:
            slice_vector = normal * slice_spacing
        affine = np.eye(4)
        affine[:3, 0] = np.asarray(orientation[:3]) * in_plane[1]
        affine[:3, 1] = np.asarray(orientation[3:6]) * in_plane[0]
        affine[:3, 2] = slice_vector
        affine[:3, 3] = first
        return SeriesGeometry(
            order, tuple(float(d) for d in ordered), (slice_spacing, in_plane[0], in_plane[1]), affine, "position"
        )
    numbers = [s.instance_number for s in slices]
    thickness = float(slices[0].slice_thickness or 1.0)
    if all(n is not None for n in numbers):
        order = tuple(sorted(range(count), key=lambda i: (numbers[i], i)))
        return SeriesGeometry(order, None, (thickness, in_plane[0], in_plane[1]), None, "instance_number")
    return SeriesGeometry(tuple(range(count)), None, (thickness, in_plane[0], in_plane[1]), None, "none")
