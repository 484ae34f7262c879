"""Collate functions for batches of items whose images differ in size.

Real cohorts mix frame sizes (512² CT beside 256² MR) and series depths, and PyTorch's default
collate then fails with "stack expects each tensor to be equal size". Two ways out:

* :func:`pad_collate`: pad every image to the batch's largest size (after the last row, column
  and slice, so affines stay true) and add ``mask``, 1 where there is image. For CNNs that take a
  fixed-size batch; resize or crop first when sizes differ a lot, or the padding dominates.
* :func:`list_collate`: images stay a list of tensors; for models that take one image at a time
  (or sliding-window inference), and for volumes of very different depths.

>>> loader = DataLoader(dataset, batch_size=8, collate_fn=pad_collate)
>>> batch["image"].shape, batch["mask"].shape
(torch.Size([8, 1, 512, 512]), torch.Size([8, 1, 512, 512]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional
from torch.utils.data import default_collate


def _rest(items: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """Collate every key but ``key`` the default way (labels stack, meta strings become lists)."""
    others = [{k: v for k, v in item.items() if k != key} for item in items]
    collated: dict[str, Any] = default_collate(others) if others and others[0] else {}
    return collated


def pad_collate(items: Sequence[dict[str, Any]], key: str = "image", value: float = 0.0) -> dict[str, Any]:
    """Pad ``key`` to the largest size in the batch; ``mask`` (uint8) marks the real voxels."""
    images = [item[key] for item in items]
    ndim = {image.ndim for image in images}
    if len(ndim) != 1:
        raise ValueError(f"pad_collate: images with different numbers of dims {sorted(ndim)} cannot share a batch")
    channels = {image.shape[0] for image in images}
    if len(channels) != 1:
        raise ValueError(f"pad_collate: images with {sorted(channels)} channels cannot share a batch")
    size = [max(image.shape[d] for image in images) for d in range(1, images[0].ndim)]
    padded, masks = [], []
    for image in images:
        # functional.pad lists the last dim first; pad only after the data so voxel (0, 0[, 0]) stays put.
        pad: list[int] = []
        for d in reversed(range(1, image.ndim)):
            pad += [0, size[d - 1] - image.shape[d]]
        padded.append(functional.pad(image, pad, value=value))
        mask = torch.ones((1, *image.shape[1:]), dtype=torch.uint8)
        masks.append(functional.pad(mask, pad, value=0))
    batch = _rest(items, key)
    batch[key] = torch.stack(padded)
    batch["mask"] = torch.stack(masks)
    return batch


def list_collate(items: Sequence[dict[str, Any]], key: str = "image") -> dict[str, Any]:
    """Keep ``key`` as a list of tensors; every other key is collated the default way."""
    batch = _rest(items, key)
    batch[key] = [item[key] for item in items]
    return batch
