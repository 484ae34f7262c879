"""apply_intensity: each slice through its own rescale and window (datasets/_convert.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ahi_torch.datasets._convert import Intensity, apply_intensity


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, None])
def test_a_volume_mixing_slopes_and_intercepts_rescales_every_slice(dtype: torch.dtype | None) -> None:
    """A batch mixing slopes (PET) must be rescaled: a mutant applied slopes only when every one differed from 1."""
    stack = np.arange(3 * 2 * 2, dtype=np.int16).reshape(1, 3, 2, 2)
    slope = np.array([1.0, 2.5, 1.0])
    intercept = np.array([0.0, 0.0, -1024.0])
    out = apply_intensity(
        stack, slope, intercept, [None, None, None], Intensity(rescale=True, window=None, dtype=dtype)
    )
    want = stack[0].astype(np.float64) * slope[:, None, None] + intercept[:, None, None]
    np.testing.assert_allclose(out[0].double().numpy(), want)


def test_windows_apply_per_slice_and_colour_is_never_rescaled() -> None:
    stack = np.full((1, 2, 2, 2), 100, dtype=np.int16)
    out = apply_intensity(
        stack, np.ones(2), np.zeros(2), [(100.0, 100.0), None], Intensity(rescale=True, window=None, dtype=None)
    )
    assert out[0, 0].tolist() == [[0.5, 0.5], [0.5, 0.5]] and out[0, 1].tolist() == [[100, 100], [100, 100]]
    rgb = np.full((3, 2, 2), 7, dtype=np.uint8)
    kept = apply_intensity(rgb, np.array([2.0]), np.array([5.0]), [None], Intensity(rescale=True, dtype=None))
    assert int(kept.max()) == 7, "slope and intercept apply to monochrome only"


def test_a_dicom_window_without_a_usable_width_is_not_applied() -> None:
    dicom = Intensity(rescale=True, window="dicom", dtype=None)
    assert dicom.window_for(40.0, 400.0) == (40.0, 400.0)
    for center, width in ((40.0, 0.0), (40.0, -1.0), (float("nan"), 400.0), (40.0, float("inf"))):
        assert dicom.window_for(center, width) is None, (center, width)
    assert Intensity(window=(10.0, 20.0)).window_for(40.0, 0.0) == (10.0, 20.0), "a fixed window ignores DICOM's"
    assert Intensity(window=None).window_for(40.0, 400.0) is None


def test_colour_frames_become_channels_first() -> None:
    from ahi_torch.datasets._convert import to_channels_first

    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    chw = to_channels_first(rgb, "RGB", "1.2.840.10008.1.2.1")
    assert chw.shape == (3, 2, 3) and chw.flags.c_contiguous
    np.testing.assert_array_equal(chw, rgb.transpose(2, 0, 1))
    assert to_channels_first(rgb[..., 0], "MONOCHROME2", "1.2.840.10008.1.2.1").shape == (1, 2, 3)
