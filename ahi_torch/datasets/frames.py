"""FrameDataset: one item per frame (2D)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..metadata.geometry import SPACE
from ._base import AHIDataset
from ._convert import apply_intensity, to_channels_first
from ._geometry import frame_affine, spacing_of


class FrameDataset(AHIDataset):
    """Every frame of an index as a 2D image, fetched lazily from AHI through the cache.

    >>> frames = FrameFetcher(client, cache=FrameCache())   # how frames are fetched, cached, checked
    >>> dataset = FrameDataset(index, frames, labels="modality", window=(40, 400))
    >>> item = dataset[0]
    >>> item["image"].shape, item["label"], item["meta"]["sop_instance_uid"]
    (torch.Size([1, 512, 512]), tensor(0), '1.2.826...')

    Items are dicts ``{"image": (C, H, W) tensor, "label": tensor, "meta": {...}}`` so MONAI
    dictionary transforms and plain callables both apply. Pixels are rescaled to modality units
    (Hounsfield units for CT) unless ``rescale=False``; ``window=(center, width)`` or
    ``"dicom"`` clips and scales to [0, 1]. ``meta`` carries the IDs, the slice index,
    ``spacing`` (row, column) in mm and ``affine``, which maps pixel ``(row, column, 0, 1)`` to
    millimetres in ``meta["space"]`` (``"LPS"``; its third column is the slice normal times the
    slice spacing).

    Args:
        index: the frames to serve (see :func:`ahi_torch.index.build_index`).
        source: where frames come from: a :class:`~ahi_torch.fetch.FrameFetcher` (client, cache,
            verification, resolution, decoder, threads, retries in one object), or an
            :class:`~ahi_torch.client.AHIClient` for a fetcher with its defaults and no cache.
            The dataset keeps a copy (its own counters and threads; the cache is shared); it
            travels into workers as configuration.
        labels: an index column, :class:`TableLabels`, a ``{series UID: label}`` mapping or a
            callable on index rows; ``unlabeled`` says what to do with frames without one.
        transform: applied to each item dict.
        error_policy: ``"raise"``, ``"skip"``, ``"retry"`` or an :class:`ErrorPolicy`: what happens
            to an item that fails. Its ``retry`` retries only what the fetch layer does not
            (the fetcher's :class:`~ahi_torch.fetch.RetryPolicy`): a frame that failed after its
            own attempts fails the item at once.
        table_dir: where the per-frame columns workers read are written once and memory-mapped
            by every process of the node (:class:`~ahi_torch.index.shared_table.SharedTable`);
            default ``$AHI_TORCH_TABLE_DIR``, else a folder under the system's temporary directory.
    """

    def __len__(self) -> int:
        return len(self.table)

    def _rows(self, unit: int) -> np.ndarray:
        return np.array([unit], dtype=np.int64)

    def first_rows(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)

    def _build(self, unit: int, frames: list[np.ndarray]) -> dict[str, Any]:
        table = self.table
        chw = to_channels_first(frames[0], table.photometric(unit), table.syntax(unit))
        window = self.intensity.window_for(float(table.window_center[unit]), float(table.window_width[unit]))
        image = apply_intensity(
            chw,
            table.rescale_slope[unit : unit + 1],
            table.rescale_intercept[unit : unit + 1],
            [window],
            self.intensity,
        )
        affine = frame_affine(table, unit, self.fetcher.reduce)
        meta = {
            **table.meta(unit),
            "index": unit,
            "spacing": torch.tensor(spacing_of(affine, 2), dtype=torch.float64),
            "affine": torch.tensor(affine, dtype=torch.float64),
            "space": SPACE,
        }
        item: dict[str, Any] = {"image": image, "meta": meta}
        label = self.label_of_row(unit)
        if label is not None:
            item["label"] = label
        return item
