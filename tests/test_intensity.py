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
