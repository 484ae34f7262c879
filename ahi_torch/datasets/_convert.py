"""Turn decoded pixels into tensors: colour, modality rescale (HU), windowing, dtype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..codecs.color import to_rgb
from ..errors import ConfigError

# torch has no arithmetic on uint16/uint32: widen them before they reach a tensor.
_WIDER = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64, np.dtype(np.int8): np.int16}


@dataclass(frozen=True)
class Intensity:
    """How stored values become the image tensor.

    Args:
        rescale: apply RescaleSlope/RescaleIntercept (monochrome only): CT in Hounsfield units.
        window: ``None``; ``(center, width)`` to clip and scale to [0, 1]; or ``"dicom"`` to use
            each frame's WindowCenter/WindowWidth (frames without one are left unwindowed).
        dtype: tensor dtype; ``None`` keeps integers (uint16 widened to int32) when neither
            rescale nor window applies.
    """

    rescale: bool = True
    window: tuple[float, float] | str | None = None
    dtype: torch.dtype | None = torch.float32

    def __post_init__(self) -> None:
        if isinstance(self.window, str) and self.window != "dicom":
            raise ConfigError(f"window must be (center, width), 'dicom' or None, not {self.window!r}")
        if isinstance(self.window, tuple) and (len(self.window) != 2 or self.window[1] <= 0):
            raise ConfigError(f"window must be (center, width) with a positive width, not {self.window!r}")

    def window_for(self, center: float, width: float) -> tuple[float, float] | None:
        if self.window is None:
            return None
        if self.window == "dicom":
            return (center, width) if np.isfinite(center) and np.isfinite(width) and width > 0 else None
        return self.window  # type: ignore[return-value]


def to_channels_first(pixels: np.ndarray, photometric: str, syntax: str) -> np.ndarray:
    """(H, W) → (1, H, W); (H, W, C) → (C, H, W), YBR converted to RGB as pydicom does."""
    if pixels.ndim == 2:
        return pixels[None]
    return np.ascontiguousarray(to_rgb(pixels, photometric, syntax).transpose(2, 0, 1))


def apply_intensity(
    stack: np.ndarray,
    slope: np.ndarray,
    intercept: np.ndarray,
    windows: list[tuple[float, float] | None],
    settings: Intensity,
) -> torch.Tensor:
    """Rescale and window a (C, [D,] H, W) array whose slices have their own slope/intercept.

    ``slope``, ``intercept`` and ``windows`` have one entry per slice (D), or one for 2D images.
    """
    monochrome = stack.shape[0] == 1
    rescale = settings.rescale and monochrome
    windowed = monochrome and any(w is not None for w in windows)
    if not rescale and not windowed:
        if settings.dtype is None:
            widened = _WIDER.get(stack.dtype)
            return torch.from_numpy(stack.astype(widened) if widened else stack)
        return torch.from_numpy(stack).to(settings.dtype)
    # Compute in float64 when float64 is asked for: float32 loses digits of slopes such as 3.774114.
    work: type[np.floating[Any]] = np.float64 if settings.dtype == torch.float64 else np.float32
    values: np.ndarray[Any, np.dtype[np.floating[Any]]] = stack.astype(work)
    # In place from here on: every temporary of a 512x512 frame is a fresh megabyte to fault in.
    shape = (1, -1) + (1,) * (stack.ndim - 2) if stack.ndim == 4 else (1, 1, 1)
    if rescale:
        if (slope != 1).any():
            np.multiply(values, slope.astype(work).reshape(shape), out=values)
        if (intercept != 0).any():
            np.add(values, intercept.astype(work).reshape(shape), out=values)
    if windowed:
        for position, window in enumerate(windows):
            if window is None:
                continue
            center, width = window
            target = values[:, position] if stack.ndim == 4 else values
            np.subtract(target, work(center - width / 2), out=target)
            np.divide(target, work(width), out=target)
            np.clip(target, 0.0, 1.0, out=target)
    tensor = torch.from_numpy(values)
    return tensor if settings.dtype in (None, tensor.dtype) else tensor.to(settings.dtype)
