"""Slice order, voxel spacing, the voxel-to-patient affine of a series, and whether it is regular.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of
the ImageOrientationPatient row and column directions), the only order that is right for
oblique and shuffled series; when positions or orientation are missing or inconsistent, by
InstanceNumber; failing that, as given.

**The convention ahi_torch keeps everywhere**: an affine indexes the tensor's own spatial axes
in order. A volume tensor is ``(C, D, H, W)`` = (channel, slice, row, column), so its affine maps
``(slice, row, column, 1)`` to patient millimetres in DICOM's **LPS** space, and ``spacing[k]`` is
the length of the affine's column ``k`` (the distance between neighbouring voxel centres along
tensor axis ``k``). A 2D frame ``(C, H, W)`` uses the same rule with ``(row, column)``.

A stack of slices is only a volume when the slices are evenly spaced along one line with one
orientation. :func:`series_geometry` says when that does not hold (``regular=False``) and why:
a missing slice, a duplicated position, uneven steps, several stacks, mixed orientations or
missing geometry. Averaging the positions of such a series gives a plausible but wrong affine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

#: Space of every affine ahi_torch produces (DICOM's patient coordinate system).
SPACE = "LPS"
#: Slice steps agree when they differ by at most this fraction of the median step (or 0.01 mm).
RELATIVE_TOLERANCE = 0.01
ABSOLUTE_TOLERANCE_MM = 0.01


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
        spacing: voxel size ``(slice, row, column)`` in mm, matching ``(D, H, W)``: the affine's
            column lengths when there is an affine.
        affine: 4x4, voxel ``(slice, row, column, 1)`` to LPS millimetres, or None without geometry.
        sorted_by: ``"position"``, ``"instance_number"`` or ``"none"``.
        regular: True when the slices form one evenly spaced stack, so the affine holds for
            every slice.
        irregularity: why the series is not regular ("" when it is).
    """

    order: tuple[int, ...]
    positions: tuple[float, ...] | None
    spacing: tuple[float, float, float]
    affine: np.ndarray | None
    sorted_by: str
    regular: bool = True
    irregularity: str = ""


def slice_normal(orientation: Sequence[float] | np.ndarray) -> np.ndarray:
    """Unit normal of the image plane from ImageOrientationPatient (row x column direction)."""
    row, column = np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:6], dtype=float)
    normal = np.cross(row, column)
    return normal / np.linalg.norm(normal)


def plane_affine(
    orientation: Sequence[float] | np.ndarray,
    pixel_spacing: Sequence[float],
    origin: Sequence[float] | np.ndarray,
    slice_vector: np.ndarray,
) -> np.ndarray:
    """The affine of voxel ``(slice, row, column, 1)`` for slices stepping by ``slice_vector`` from ``origin``.

    Moving down a row follows ImageOrientationPatient's *column* direction cosine by
    PixelSpacing[0]; moving along a row follows its *row* direction cosine by PixelSpacing[1].
    """
    affine = np.eye(4)
    affine[:3, 0] = slice_vector
    affine[:3, 1] = np.asarray(orientation[3:6], dtype=float) * float(pixel_spacing[0])
    affine[:3, 2] = np.asarray(orientation[:3], dtype=float) * float(pixel_spacing[1])
    affine[:3, 3] = np.asarray(origin, dtype=float)
    return affine


def _consistent(values: list[tuple[float, ...] | None]) -> tuple[float, ...] | None:
    """The first value when every value is within 1e-4 of it (np.allclose), else None."""
    first = values[0]
    if first is None or any(v is None or len(v) != len(first) for v in values):
        return None
    # One array comparison instead of np.allclose per instance (30 µs each, thousands per series).
    if not np.allclose(np.asarray(values, dtype=float), np.asarray(first, dtype=float), atol=1e-4):
        return None
    return first


def stack_irregularity(points: np.ndarray, normal: np.ndarray) -> str:
    """Why slice positions ``points`` (sorted along ``normal``) are not one evenly spaced stack, or ""."""
    count = len(points)
    if count < 2:
        return ""
    distances = points @ normal
    steps = np.diff(distances)
    median = float(np.median(steps))
    tolerance = max(ABSOLUTE_TOLERANCE_MM, RELATIVE_TOLERANCE * abs(median))
    duplicates = int((np.abs(steps) <= ABSOLUTE_TOLERANCE_MM).sum())
    if duplicates:
        return f"{duplicates} duplicated slice position(s): several stacks or repeated acquisitions"
    uneven = np.abs(steps - median) > tolerance
    if uneven.any():
        ratios = steps / median
        if np.all(np.abs(ratios - np.round(ratios)) * abs(median) <= tolerance):
            gaps = [int(i) for i in np.flatnonzero(ratios > 1.5)]
            missing = int(np.round(ratios[gaps]).sum()) - len(gaps)
            gap = f"{steps[gaps[0]]:.4g} mm after slice {gaps[0]}"
            return f"{missing} missing slice(s): a gap of {gap} (step {median:.4g} mm)"
        return f"uneven slice steps from {steps.min():.4g} to {steps.max():.4g} mm (median {median:.4g} mm)"
    # Evenly spaced along the normal; the slices must also lie on one line (no side-by-side stacks).
    step_vector = (points[-1] - points[0]) / (count - 1)
    expected = points[0] + np.arange(count)[:, None] * step_vector
    offset = float(np.linalg.norm(points - expected, axis=1).max())
    if offset > tolerance:
        return f"slice positions do not lie on one line (off by up to {offset:.4g} mm): several stacks"
    return ""


def series_geometry(slices: Sequence[SliceLike]) -> SeriesGeometry:
    """Compute :class:`SeriesGeometry` for the instances of one series (single-frame slices)."""
    count = len(slices)
    if count == 0:
        return SeriesGeometry((), None, (1.0, 1.0, 1.0), None, "none")
    thickness = float(slices[0].slice_thickness or 1.0)
    spacings = [s.pixel_spacing for s in slices]
    in_plane = spacings[0] or (1.0, 1.0)
    orientation = _consistent([s.orientation for s in slices])
    positions = [s.position for s in slices]
    problem = ""
    if count > 1 and _consistent(spacings) is None and any(spacings):  # type: ignore[arg-type]
        problem = "mixed PixelSpacing"
    if orientation is not None and all(p is not None for p in positions):
        normal = slice_normal(orientation)
        points = np.asarray(positions, dtype=float)
        distances = points @ normal
        order = tuple(int(i) for i in np.argsort(distances, kind="stable"))
        ordered = points[list(order)]
        first = ordered[0]
        slice_vector = (ordered[-1] - first) / (count - 1) if count > 1 else normal * thickness
        if not np.linalg.norm(slice_vector) > 0:  # every slice at one position
            slice_vector = normal * thickness
        # The step between first and last slice, not the normal, also captures gantry tilt.
        affine = plane_affine(orientation, in_plane, first, slice_vector)
        problem = problem or stack_irregularity(ordered, normal)
        return SeriesGeometry(
            order,
            tuple(float(d) for d in distances[list(order)]),
            _column_lengths(affine),
            affine,
            "position",
            regular=not problem,
            irregularity=problem,
        )
    if count > 1:
        missing = "mixed ImageOrientationPatient" if orientation is None and slices[0].orientation else ""
        problem = problem or missing or "no ImagePositionPatient/ImageOrientationPatient"
    numbers = [s.instance_number for s in slices]
    spacing = (thickness, float(in_plane[0]), float(in_plane[1]))
    if all(n is not None for n in numbers):
        order = tuple(sorted(range(count), key=lambda i: (numbers[i], i)))
        if problem:
            problem += ": ordered by InstanceNumber, no affine"
        return SeriesGeometry(order, None, spacing, None, "instance_number", not problem, problem)
    if problem:
        problem += ": kept in document order, no affine"
    return SeriesGeometry(tuple(range(count)), None, spacing, None, "none", not problem, problem)


def _column_lengths(affine: np.ndarray) -> tuple[float, float, float]:
    lengths = np.linalg.norm(affine[:3, :3], axis=0)
    return (float(lengths[0]), float(lengths[1]), float(lengths[2]))
