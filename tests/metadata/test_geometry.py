"""Series geometry: irregular stacks are detected, never averaged into a plausible wrong affine."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ahi_torch.datasets._geometry import frame_affines
from ahi_torch.metadata import series_geometry
from ahi_torch.metadata.geometry import plane_affine, slice_normal
from ahi_torch.sample.synthetic import AXIAL, oblique


@dataclass(frozen=True)
class Slice:
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None = AXIAL  # type: ignore[assignment]
    pixel_spacing: tuple[float, float] | None = (0.8, 0.7)
    instance_number: int | None = None
    slice_thickness: float | None = 2.5


def stack(
    zs: list[float], orientation: tuple[float, ...] = AXIAL, shift: dict[int, float] | None = None
) -> list[Slice]:
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    slices = []
    for i, z in enumerate(zs):
        point = np.array([-20.0, -30.0, -50.0]) + z * normal + (shift or {}).get(i, 0.0) * row
        slices.append(Slice(tuple(float(v) for v in point), tuple(orientation), instance_number=i + 1))  # type: ignore[arg-type]
    return slices


def test_regular_oblique_stack_in_any_order() -> None:
    zs = [2.5 * k for k in range(8)]
    slices = stack(zs, oblique(20.0))
    shuffled = [slices[i] for i in (3, 0, 7, 5, 1, 6, 2, 4)]
    geometry = series_geometry(shuffled)
    assert geometry.regular and geometry.irregularity == ""
    assert geometry.spacing == pytest.approx((2.5, 0.8, 0.7))
    # Every slice lands where its own ImagePositionPatient says.
    for k, index in enumerate(geometry.order):
        np.testing.assert_allclose(geometry.affine @ [k, 0, 0, 1], [*shuffled[index].position, 1.0], atol=1e-9)  # type: ignore[misc]
    # Row 1 moves along the column direction cosine by PixelSpacing[0]; column 1 along the row cosine.
    np.testing.assert_allclose(geometry.affine[:3, 1], np.array(oblique(20.0)[3:]) * 0.8)
    np.testing.assert_allclose(geometry.affine[:3, 2], np.array(oblique(20.0)[:3]) * 0.7)


@pytest.mark.parametrize(
    ("zs", "shift", "expected"),
    [
        ([0, 2.5, 5, 10, 12.5, 15], None, "1 missing slice(s): a gap of 5 mm after slice 2"),
        ([0, 2.5, 5, 5, 7.5, 10], None, "1 duplicated slice position(s)"),
        ([0, 2.5, 5, 7.6, 10, 12.5], None, "uneven slice steps from 2.4 to 2.6 mm"),
        ([0, 1.25, 2.5, 3.75, 5.0, 6.25], {1: 30.0, 3: 30.0, 5: 30.0}, "do not lie on one line"),
        ([0, 0, 2.5, 2.5, 5, 5, 7.5, 7.5], None, "4 duplicated slice position(s)"),
    ],
    ids=["missing", "duplicate", "uneven", "side-by-side", "interleaved"],
)
def test_irregular_stacks_are_flagged(zs: list[float], shift: dict[int, float] | None, expected: str) -> None:
    geometry = series_geometry(stack(zs, shift=shift))
    assert not geometry.regular
    assert expected in geometry.irregularity


def test_mixed_orientation_and_missing_positions_are_irregular() -> None:
    mixed = stack([0, 2.5, 5])
    mixed[1] = Slice(mixed[1].position, oblique(10.0), instance_number=2)  # type: ignore[arg-type]
    geometry = series_geometry(mixed)
    assert not geometry.regular and geometry.affine is None
    assert geometry.irregularity.startswith("mixed ImageOrientationPatient")

    unplaced = [Slice(None, None, instance_number=n) for n in (2, 1, 3)]
    geometry = series_geometry(unplaced)
    assert not geometry.regular and "InstanceNumber" in geometry.irregularity
    assert series_geometry(unplaced[:1]).regular  # one slice is trivially a stack


def test_mixed_pixel_spacing_is_irregular() -> None:
    slices = stack([0, 2.5, 5])
    slices[2] = Slice(slices[2].position, pixel_spacing=(0.9, 0.9), instance_number=3)
    geometry = series_geometry(slices)
    assert not geometry.regular and geometry.irregularity == "mixed PixelSpacing"


def test_single_slices_and_stacks_at_one_position() -> None:
    """Survivors of `make mutate` (docs/testing.md): the slice step when there is no second position."""
    (one,) = stack([0.0])
    geometry = series_geometry([one])
    assert geometry.regular
    np.testing.assert_allclose(geometry.affine[:3, 0], [0.0, 0.0, 2.5])  # normal x SliceThickness
    assert geometry.spacing == pytest.approx((2.5, 0.8, 0.7))
    same_place = series_geometry(stack([5.0, 5.0, 5.0]))
    assert not same_place.regular and "duplicated" in same_place.irregularity
    np.testing.assert_allclose(same_place.affine[:3, 0], [0.0, 0.0, 2.5])
    two = stack([0, 2.5])
    two[1] = Slice(two[1].position, oblique(10.0), instance_number=2)  # type: ignore[arg-type]
    mixed = series_geometry(two)
    assert not mixed.regular and mixed.irregularity.startswith("mixed ImageOrientationPatient")


_spacing = st.one_of(st.floats(0.01, 10.0), st.sampled_from([0.0, -1.0, float("nan")]))


@settings(max_examples=60, deadline=None)
@given(
    frames=st.lists(
        st.tuples(
            st.floats(-89.0, 89.0),
            _spacing,
            _spacing,
            _spacing,
            st.lists(st.floats(-500.0, 500.0), min_size=3, max_size=3),
            st.booleans(),
        ),
        min_size=1,
        max_size=12,
    ),
    reduce=st.integers(0, 3),
)
def test_a_batch_of_frame_affines_is_each_frames_plane_affine(frames: list, reduce: int) -> None:
    """frame_affines, computed for a whole batch, is plane_affine per frame with its columns reordered."""
    orientations = np.array([oblique(angle) for angle, *_ in frames], dtype=np.float64)
    positions = np.array([position for *_, position, _ in frames], dtype=np.float64)
    placed = np.array([has_place for *_, has_place in frames])
    orientations[~placed] = np.nan
    table = SimpleNamespace(
        pixel_spacing_row=np.array([f[1] for f in frames]),
        pixel_spacing_col=np.array([f[2] for f in frames]),
        slice_spacing=np.array([f[3] for f in frames]),
        image_orientation=orientations,
        image_position=positions,
    )
    rows = np.arange(len(frames))[::-1]  # not in table order
    affines = frame_affines(table, rows, reduce)  # type: ignore[arg-type]

    def step(value: float) -> float:
        return value if np.isfinite(value) and value > 0 else 1.0

    for affine, row in zip(affines, rows, strict=True):
        _, spacing_row, spacing_col, thickness, *_ = frames[row]
        in_plane = (step(spacing_row), step(spacing_col))
        if placed[row]:
            orientation = orientations[row]
            expected = plane_affine(orientation, in_plane, positions[row], slice_normal(orientation) * step(thickness))
            expected = expected[:, [1, 2, 0, 3]]
        else:
            expected = np.diag([*in_plane, step(thickness), 1.0])
        expected[:3, :2] *= 2**reduce
        np.testing.assert_allclose(affine, expected, atol=1e-9)
