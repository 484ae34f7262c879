"""Small dictionary transforms for dataset items, and the name registry configs use.

Items are ``{"image": tensor, "label": ..., "meta": {...}}``; every transform here takes and
returns such a dict. Every transform that changes the grid (resize, crop, pad, flip, resample)
updates ``meta["affine"]`` and ``meta["spacing"]`` so they keep describing the tensor (see
:mod:`ahi_torch.metadata.geometry` for the convention). For MONAI's transforms, hand items over
with :func:`ahi_torch.integrations.monai.to_metatensor` (MONAI reads geometry from a
``MetaTensor``, and assumes an identity affine for a plain tensor).

>>> transform = Compose([Window(40, 400), Resize([128, 128]), RandomFlip(axis=-1)])
>>> dataset = FrameDataset(index, client, transform=transform)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from .errors import ConfigError

Item = dict[str, Any]


@dataclass(frozen=True)
class Window:
    """Clip to ``center ± width/2`` and scale to [0, 1] (CT: (40, 400) soft tissue, (-600, 1500) lung)."""

    center: float
    width: float

    def __call__(self, item: Item) -> Item:
        low = self.center - self.width / 2
        item["image"] = ((item["image"].float() - low) / self.width).clamp_(0.0, 1.0)
        return item


@dataclass(frozen=True)
class Normalize:
    """Subtract ``mean`` and divide by ``std``."""

    mean: float = 0.0
    std: float = 1.0

    def __call__(self, item: Item) -> Item:
        item["image"] = (item["image"].float() - self.mean) / self.std
        return item


def _spatial_axis(image: torch.Tensor, axis: int) -> int:
    """The spatial axis (0 = first after the channel) that tensor axis ``axis`` names."""
    position = axis % image.ndim
    if position == 0:
        raise ConfigError("axis 0 is the channel axis; name a spatial axis (1.. or negative)")
    return position - 1


def _regrid(item: Item, index_map: np.ndarray) -> Item:
    """Keep ``meta["affine"]`` and ``meta["spacing"]`` true after the grid changed.

    ``index_map`` (4x4) maps a new voxel index to the old one, so the new affine is the old one
    times it. Items without an affine (user data) pass unchanged.
    """
    meta = item.get("meta")
    if not isinstance(meta, dict) or meta.get("affine") is None:
        return item
    old = torch.as_tensor(meta["affine"], dtype=torch.float64)
    affine = old @ torch.as_tensor(index_map, dtype=torch.float64)
    meta["affine"] = affine
    spatial = item["image"].ndim - 1
    meta["spacing"] = torch.linalg.vector_norm(affine[:3, :spatial], dim=0)
    return item


def _index_map(scales: Sequence[float] = (), shifts: Sequence[float] = ()) -> np.ndarray:
    matrix = np.eye(4)
    for axis, scale in enumerate(scales):
        matrix[axis, axis] = scale
    for axis, shift in enumerate(shifts):
        matrix[axis, 3] = shift
    return matrix


@dataclass(frozen=True)
class Resize:
    """Resize the spatial dims to ``size`` ((H, W) for frames, (D, H, W) for volumes), geometry kept.

    Interpolation follows ``align_corners=False``: new voxel ``j`` sits at old index
    ``(j + 0.5) * old / new - 0.5``, so the affine is rescaled and shifted by half a voxel.
    """

    size: Sequence[int]

    def __call__(self, item: Item) -> Item:
        image = item["image"].float()
        if len(self.size) != image.ndim - 1:
            raise ConfigError(f"resize: size {list(self.size)} does not match {image.ndim - 1} spatial dims")
        mode = "bilinear" if image.ndim == 3 else "trilinear"
        old = image.shape[1:]
        item["image"] = functional.interpolate(image[None], size=tuple(self.size), mode=mode, align_corners=False)[0]
        scales = [n / m for n, m in zip(old, self.size, strict=True)]
        return _regrid(item, _index_map(scales, [s / 2 - 0.5 for s in scales]))


@dataclass(frozen=True)
class RandomFlip:
    """Flip along ``axis`` with probability ``p`` (torch's RNG: DataLoader seeds it per worker).

    The affine follows the flip, so voxels keep their place in the patient.
    """

    axis: int = -1
    p: float = 0.5

    def __call__(self, item: Item) -> Item:
        if torch.rand(()) < self.p:
            image = item["image"]
            spatial = _spatial_axis(image, self.axis)
            item["image"] = image.flip(spatial + 1)
            scales = [-1.0 if k == spatial else 1.0 for k in range(image.ndim - 1)]
            shifts = [image.shape[spatial + 1] - 1.0 if k == spatial else 0.0 for k in range(image.ndim - 1)]
            _regrid(item, _index_map(scales, shifts))
        return item


@dataclass(frozen=True)
class CropOrPad:
    """Centre-crop or zero-pad every spatial dim to ``size`` (``-1`` keeps a dim), geometry kept."""

    size: Sequence[int]

    def __call__(self, item: Item) -> Item:
        image = item["image"]
        if len(self.size) != image.ndim - 1:
            raise ConfigError(f"crop_or_pad: size {list(self.size)} does not match {image.ndim - 1} spatial dims")
        starts = []
        for axis, wanted in enumerate(self.size):
            length = image.shape[axis + 1]
            target = length if wanted < 0 else wanted
            if length > target:
                start = (length - target) // 2
                image = image.narrow(axis + 1, start, target)
            elif length < target:
                start = -((target - length) // 2)
                pad = [0, 0] * (image.ndim - 1)
                pad[2 * (image.ndim - 2 - axis)] = -start  # functional.pad lists the last dim first
                pad[2 * (image.ndim - 2 - axis) + 1] = target - length + start
                image = functional.pad(image, pad)
            else:
                start = 0
            starts.append(float(start))
        item["image"] = image
        return _regrid(item, _index_map(shifts=starts))


@dataclass(frozen=True)
class CropOrPadDepth:
    """Centre-crop or zero-pad a volume's depth (D) to ``depth`` slices, geometry kept."""

    depth: int

    def __call__(self, item: Item) -> Item:
        return CropOrPad([self.depth, -1, -1])(item)


@dataclass(frozen=True)
class Spacing:
    """Resample to voxel ``spacing`` in mm ((row, column) for frames, (slice, row, column) for volumes).

    Like MONAI's ``Spacingd`` for ahi_torch items: the first voxel's centre stays in place, the
    affine's directions are kept and its steps become ``spacing``; the grid covers the old
    extent. ``mode`` is ``"bilinear"`` (trilinear for volumes) or ``"nearest"`` (for masks).

    >>> Spacing([1.0, 1.0, 1.0])(volume)["meta"]["spacing"]
    tensor([1., 1., 1.], dtype=torch.float64)
    """

    spacing: Sequence[float]
    mode: str = "bilinear"

    def __post_init__(self) -> None:
        if self.mode not in ("bilinear", "nearest"):
            raise ConfigError(f"spacing: mode must be 'bilinear' or 'nearest', not {self.mode!r}")
        if any(s <= 0 for s in self.spacing):
            raise ConfigError(f"spacing: every spacing must be positive, not {list(self.spacing)}")

    def __call__(self, item: Item) -> Item:
        image = item["image"]
        spatial = image.ndim - 1
        meta = item.get("meta") or {}
        if len(self.spacing) != spatial or meta.get("spacing") is None:
            raise ConfigError(f"spacing: needs an item with meta['spacing'] and {len(self.spacing)} spatial dims")
        old = [float(s) for s in torch.as_tensor(meta["spacing"])[:spatial]]
        steps = [new / before for new, before in zip(self.spacing, old, strict=True)]
        shape = [int(np.floor((n - 1) / step + 1e-6)) + 1 for n, step in zip(image.shape[1:], steps, strict=True)]
        # grid_sample wants (x, y[, z]) = the last axis first, in [-1, 1] with align_corners=True.
        axes = [
            torch.arange(m, dtype=torch.float64) * step * 2 / max(n - 1, 1) - 1
            for m, n, step in zip(shape, image.shape[1:], steps, strict=True)
        ]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)[None]
        values = image.float() if not image.is_floating_point() else image
        resampled = functional.grid_sample(
            values[None], grid.to(values.dtype), mode=self.mode, padding_mode="border", align_corners=True
        )[0]
        item["image"] = resampled if image.is_floating_point() or self.mode != "nearest" else resampled.to(image.dtype)
        return _regrid(item, _index_map(steps))


@dataclass(frozen=True)
class Compose:
    transforms: Sequence[Callable[[Item], Item]]

    def __call__(self, item: Item) -> Item:
        for transform in self.transforms:
            item = transform(item)
        return item


REGISTRY: dict[str, Callable[..., Callable[[Item], Item]]] = {
    "window": Window,
    "normalize": Normalize,
    "resize": Resize,
    "random_flip": RandomFlip,
    "crop_or_pad": CropOrPad,
    "crop_or_pad_depth": CropOrPadDepth,
    "spacing": Spacing,
}


def create(name: str, args: dict[str, Any]) -> Callable[[Item], Item]:
    """A transform by registry name, or by ``module:Class`` import path."""
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ConfigError(f"transform {name!r} cannot be imported: {error}") from None
    elif name in REGISTRY:
        factory = REGISTRY[name]
    else:
        raise ConfigError(f"unknown transform {name!r} (known: {', '.join(REGISTRY)}; or give module:Class)")
    try:
        return factory(**args)
    except TypeError as error:
        raise ConfigError(f"transform {name!r}: {error}") from None
