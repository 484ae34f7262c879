"""Small dictionary transforms for dataset items, and the name registry configs use.

Items are ``{"image": tensor, "label": ..., "meta": {...}}``; every transform here takes and
returns such a dict, like MONAI's dictionary transforms (which work on these items too: give a
``module:Class`` path such as ``monai.transforms:RandFlipd`` in a config).

>>> transform = Compose([Window(40, 400), Resize([128, 128]), RandomFlip(axis=-1)])
>>> dataset = FrameDataset(index, client, transform=transform)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Resize:
    """Resize the spatial dims to ``size`` ((H, W) for frames, (D, H, W) for volumes)."""

    size: Sequence[int]

    def __call__(self, item: Item) -> Item:
        image = item["image"].float()
        mode = "bilinear" if image.ndim == 3 else "trilinear"
        item["image"] = functional.interpolate(image[None], size=tuple(self.size), mode=mode, align_corners=False)[0]
        return item


@dataclass(frozen=True)
class RandomFlip:
    """Flip along ``axis`` with probability ``p`` (torch's RNG: DataLoader seeds it per worker)."""

    axis: int = -1
    p: float = 0.5

    def __call__(self, item: Item) -> Item:
        if torch.rand(()) < self.p:
            item["image"] = item["image"].flip(self.axis)
        return item


@dataclass(frozen=True)
class CropOrPadDepth:
    """Centre-crop or zero-pad a volume's depth (D) to ``depth`` slices."""

    depth: int

    def __call__(self, item: Item) -> Item:
        image = item["image"]
        depth = image.shape[1]
        if depth > self.depth:
            start = (depth - self.depth) // 2
            image = image[:, start : start + self.depth]
        elif depth < self.depth:
            before = (self.depth - depth) // 2
            image = functional.pad(image, (0, 0, 0, 0, before, self.depth - depth - before))
        item["image"] = image
        return item


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
    "crop_or_pad_depth": CropOrPadDepth,
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
